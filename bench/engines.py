"""The engines under test and the clients that drive them.

Each engine lives in its own throwaway host netns with its own data root,
socket and cgroup parent. A `Client` is a docker-compatible command line
(`coracle`, `docker`, `podman`) bound to one engine: every benchmark issues the
same verbs and flags through it, so the figures compare like with like.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import system
from coracle.cli import launcher

REPO = Path(__file__).resolve().parent.parent
IMAGE = "busybox:latest"
DOCKER_CLI = shutil.which("docker") or "docker"


class EngineUnavailable(RuntimeError):
    """The engine cannot run on this machine; the message says why (it goes into the report)."""


@dataclass
class Client:
    """One docker-style command line bound to one engine."""

    label: str
    program: str  # which CLI: coracle, docker or podman
    engine: Engine
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Flags a verb needs on this engine to mean what it means on Docker (e.g. podman rm -f waits 10 s).
    verb_flags: dict[str, list[str]] = field(default_factory=dict)

    def cmd(self, verb: str, *args: str) -> list[str]:
        return [*self.argv, verb, *self.verb_flags.get(verb, []), *args]

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def run(self, verb: str, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        res = subprocess.run(self.cmd(verb, *args), capture_output=True, text=True, env=self.environ(),
                             timeout=timeout, cwd=REPO)
        if check and res.returncode != 0:
            raise RuntimeError(f"{self.label}: {verb} {' '.join(args)} -> exit {res.returncode}: "
                               f"{(res.stderr or res.stdout).strip()[-800:]}")
        return res

    def timed(self, verb: str, *args: str, timeout: float = 300) -> float:
        """Wall time of one command, CLI start-up included; raises if it fails."""
        start = time.perf_counter()
        self.run(verb, *args, timeout=timeout)
        return time.perf_counter() - start

    def popen(self, verb: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(verb, *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=self.environ(), cwd=REPO)

    def describe(self, verb: str, *args: str) -> str:
        """The command after this client's prefix (the prefix is in `prefix()`), as typed."""
        return shlex.join([verb, *self.verb_flags.get(verb, []), *args])

    def prefix(self) -> str:
        return system.describe_command(self.argv, self.env)

    def inspect(self, name: str) -> dict:
        return json.loads(self.run("inspect", name).stdout)[0]

    def pid(self, name: str) -> int:
        return int(self.inspect(name)["State"]["Pid"])

    def ip(self, name: str, network: str | None = None) -> str:
        nets = self.inspect(name)["NetworkSettings"]["Networks"]
        for net_name, net in nets.items():
            if (network is None or net_name == network) and net.get("IPAddress"):
                return net["IPAddress"]
        raise RuntimeError(f"{self.label}: {name} has no IP address on {network or 'any network'}: {nets}")

    def remove_all(self) -> None:
        """Best effort and bounded: a hung engine is then torn down by force (netns, cgroups)."""
        ids = self.run("ps", "-aq", check=False, timeout=60).stdout.split()
        for i in range(0, len(ids), 100):
            if self.run("rm", "-f", *ids[i:i + 100], check=False, timeout=120).returncode != 0:
                return


class Engine:
    """An engine instance private to this bench run."""

    name = "engine"

    def __init__(self, root: Path, tag: str) -> None:
        self.root = root / self.name
        self.netns = f"bench-{self.name[:4]}-{tag}"
        self.netns_path = f"/run/netns/{self.netns}"
        self.cgroup_parent = f"bench-{self.name}-{tag}"
        self.proc: subprocess.Popen | None = None
        self.inode = 0
        self.clients: list[Client] = []

    # ----- life -----------------------------------------------------------------------

    def start(self, image_tar: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        system.create_host_netns(self.netns)
        self.inode = system.netns_inode(self.netns_path)
        self._start(image_tar)

    def _start(self, image_tar: Path) -> None:
        raise NotImplementedError

    def _spawn_daemon(self, argv: list[str], sock: str, timeout: float = 60) -> None:
        with open(self.root / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(system.in_netns_argv(self.netns, argv), stdout=log, stderr=log,
                                         start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ping(sock):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = (self.root / "daemon.log").read_text(errors="replace")[-1500:]
        raise EngineUnavailable(f"{self.name} daemon did not come up: {tail.strip()}")

    def version(self) -> str:
        raise NotImplementedError

    def daemon_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def destroy(self) -> None:
        """Remove everything this engine made, whatever state it is in."""
        for client in self.clients[:1]:
            with contextlib.suppress(Exception):
                client.remove_all()
        if self.proc and self.proc.poll() is None:
            system.stop_pid(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.inode:
            system.kill_netns_processes(self.inode)
        system.kill_cgroup_tree(self.cgroup_parent)
        system.unmount_under(self.root)
        system.delete_netns(self.netns)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def primary(self) -> Client:
        return self.clients[0]


def _ping(sock: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(sock)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            return b"OK" in s.recv(4096)
    except OSError:
        return False


class Coracle(Engine):
    name = "coracle"

    def _start(self, image_tar: Path) -> None:
        self.sock = str(self.root / "exec" / "coracle.sock")
        self._spawn_daemon([sys.executable, "-m", "coracle.daemon", "--data-root", str(self.root / "data"),
                            "--exec-root", str(self.root / "exec"), "-H", f"unix://{self.sock}",
                            "--cgroup-parent", self.cgroup_parent], self.sock)
        cli = self.root / "coracle"  # the launcher scripts/install.sh installs, for this checkout
        launcher.write(str(cli))
        self.clients = [
            Client("coracle", "coracle", self, [str(cli)], {"CORACLE_HOST": f"unix://{self.sock}"}),
            Client("coracle (docker CLI)", "docker", self, [DOCKER_CLI], {"DOCKER_HOST": f"unix://{self.sock}"}),
        ]
        # The built-in busybox is the very image the others import: nothing to load.

    def use_clients(self, programs: list[str]) -> None:
        """Keep only these CLIs, in this order (the first one drives daemon-bound sections)."""
        chosen = [c for p in programs for c in self.clients if c.program == p]
        if not chosen:
            raise EngineUnavailable(f"no coracle client among {programs}")
        self.clients = chosen

    def version(self) -> str:
        from coracle import __version__

        return __version__

    def daemon_pids(self) -> list[int]:
        pids = super().daemon_pids()
        # ip netns exec -> sh -> exec python: the Popen pid is the daemon itself.
        for name in ("monitor.pid", "keeper.pid"):  # the supervisors are part of the engine's cost
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((self.root / "exec" / "monitor" / name).read_text()))
        return pids


class Docker(Engine):
    name = "docker"

    def _start(self, image_tar: Path) -> None:
        if not shutil.which("dockerd"):
            raise EngineUnavailable("dockerd is not installed (apt-get install docker.io)")
        self.sock = str(self.root / "docker.sock")
        config = self.root / "daemon.json"
        config.write_text("{}\n")  # never the machine's /etc/docker/daemon.json
        self._spawn_daemon(["dockerd", "--config-file", str(config), "--data-root", str(self.root / "data"),
                            "--exec-root", str(self.root / "exec"), "-H", f"unix://{self.sock}",
                            "--pidfile", str(self.root / "dockerd.pid"), "--cgroup-parent", self.cgroup_parent],
                           self.sock)
        self.clients = [Client("docker", "docker", self, [DOCKER_CLI], {"DOCKER_HOST": f"unix://{self.sock}"})]
        self.primary.run("import", "-c", f"ENV {_image_path_env()}", str(image_tar), IMAGE)

    def version(self) -> str:
        return self.primary.run("version", "-f", "{{.Server.Version}}").stdout.strip()


class Podman(Engine):
    """Podman is daemonless: its CLI is the engine, run inside the host netns via nsenter."""

    name = "podman"

    def _start(self, image_tar: Path) -> None:
        if not shutil.which("podman"):
            raise EngineUnavailable("podman is not installed (apt-get install podman netavark aardvark-dns)")
        conf = self.root / "containers.conf"
        # default_ulimits = []: podman's default nofile limit needs CAP_SYS_RESOURCE, which root lacks here.
        conf.write_text(
            "[containers]\ndefault_ulimits = []\n"
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
            f"events_logfile_path = \"{self.root}/events.log\"\n"
            f"[network]\nnetwork_backend = \"netavark\"\nnetwork_config_dir = \"{self.root}/networks\"\n")
        storage = self.root / "storage.conf"
        storage.write_text(f"[storage]\ndriver = \"overlay\"\ngraphroot = \"{self.root}/root\"\n"
                           f"runroot = \"{self.root}/run\"\n")
        argv = system.nsenter_argv(self.netns_path, [
            "podman", "--root", str(self.root / "root"), "--runroot", str(self.root / "run"),
            "--tmpdir", str(self.root / "tmp")])
        env = {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}
        flags = {"run": ["--cgroup-parent", f"/{self.cgroup_parent}"],
                 "create": ["--cgroup-parent", f"/{self.cgroup_parent}"],
                 "rm": ["-t", "0"]}  # docker rm -f kills at once; podman's waits the stop timeout
        self.clients = [Client("podman", "podman", self, argv, env, flags)]
        self.primary.run("import", "-c", f"ENV {_image_path_env()}", str(image_tar), IMAGE)

    def version(self) -> str:
        return self.primary.run("version", "-f", "{{.Client.Version}}").stdout.strip()

    def destroy(self) -> None:
        try:
            self.primary.remove_all()
            self.primary.run("network", "prune", "-f", check=False)
        except Exception:
            pass
        super().destroy()


ENGINES: dict[str, type[Engine]] = {"coracle": Coracle, "docker": Docker, "podman": Podman}


def _image_path_env() -> str:
    from coracle.images.builtin import PATH_ENV

    return PATH_ENV


def write_image_tar(path: Path) -> Path:
    """The layer of coracle's built-in busybox, so Docker and Podman get byte-identical content."""
    from coracle.images.builtin import layer_tar

    data, _mtime = layer_tar()
    path.write_bytes(data)
    return path
