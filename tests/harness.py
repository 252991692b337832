"""A private coracled for tests: own netns, data root, exec root, socket, cgroup parent.

The daemon runs inside a throwaway network namespace (its "host"), so its
bridge, veths and nftables table never touch the machine's own network.
`Daemon.destroy()` removes everything it made, even after a failure: the
monitor and every container process, cgroups, the namespace and the files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SESSION_TAG = secrets.token_hex(3)


def unique(prefix: str) -> str:
    """A short name unique to this test session (fits IFNAMSIZ when prefix <= 5 chars).

    Names carry a per-session random tag so that several test runs on one
    machine (or a run next to a real daemon) cannot collide.
    """
    return f"{prefix}{SESSION_TAG}{secrets.token_hex(2)}"


def exec_output(container: Container, cmd: str | list[str], **kw: Any) -> bytes:
    """What `cmd` printed in a running container (the SDK's exec_run, not streamed)."""
    output = container.exec_run(cmd, **kw).output
    assert isinstance(output, bytes)
    return output


def busybox_rootfs(root: Path) -> Path:
    """A minimal image directory for runtime-level tests: busybox with its applets, root and nobody."""
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    return root


def start_registry(netns: str, workdir: Path, addr: str = "127.0.0.1") -> tuple[subprocess.Popen, int]:
    """Debian's docker-registry on `addr` (the loopback unless told) of `netns`; returns (process, port)
    once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'registry-data'}\n"
        f"http:\n  addr: {addr}:{port}\n  secret: tests\n")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", "/usr/bin/docker-registry", "serve",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        probe = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "bash", "-c",
                                f"echo > /dev/tcp/{addr}/{port}"], capture_output=True)
        if probe.returncode == 0:
            break
        time.sleep(0.05)
    return proc, port


def fill_filesystem(path: Path) -> None:
    """Write `path` until its filesystem has no block left (the caller removes it to give space back)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096, 512):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)


def _ping(sock_path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(sock_path)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            return b"OK" in s.recv(4096)
    except OSError:
        return False


class Daemon:
    """One coracled with everything private to it."""

    def __init__(self, tag: str, netns: str | None = None, extra_args: list[str] | None = None) -> None:
        self.tag = tag
        self.netns = netns or f"cd{tag}"
        self.own_netns = netns is None
        self.root = Path(f"/tmp/coracle-test-{tag}")
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.sock = str(self.exec_root / "coracle.sock")
        self.host = f"unix://{self.sock}"
        self.cgroup_parent = f"coracle-test-{tag}"
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "coracled.log"

    # ----- life ------------------------------------------------------------

    def create_netns(self) -> None:
        if self.own_netns:
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # nsenter switches only the network namespace; `ip netns exec` would also remount
        # /sys and hide the cgroup filesystems from the daemon.
        args = [
            "nsenter", f"--net=/run/netns/{self.netns}", PYTHON, "-m", "coracle.daemon",
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root), "-H", self.host,
            "--cgroup-parent", self.cgroup_parent, *self.extra_args,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, **(env or {})},
                                         start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ping(self.sock):
                return
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"coracled exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"coracled did not answer:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Stop the API daemon only (the monitor and containers stay)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def monitor_pid(self) -> int | None:
        try:
            return int((self.exec_root / "monitor" / "monitor.pid").read_text())
        except (OSError, ValueError):
            return None

    def keeper_pid(self) -> int | None:
        try:
            return int((self.exec_root / "monitor" / "keeper.pid").read_text())
        except (OSError, ValueError):
            return None

    def destroy(self) -> None:
        """Remove every trace: daemon, keeper, monitor, containers, cgroups, netns, files."""
        self.stop(signal.SIGKILL)
        for pid in (self.keeper_pid(), self.monitor_pid()):  # the keeper first: it restarts the monitor
            if pid:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        kill_cgroup_tree(self.cgroup_parent)
        kill_port_proxies(self.exec_root)
        if self.own_netns:
            subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)
        unmount_below(self.root)  # volumes (tmpfs, bind) the daemon mounted on the host
        shutil.rmtree(self.root, ignore_errors=True)

    # ----- clients -----------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CORACLE_HOST": self.host}
        res = subprocess.run([PYTHON, "-m", "coracle.cli.main", *args], input=input, capture_output=True,
                             text=True, env=env, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"coracle {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def docker(self, *args: str, input: str | None = None, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.host}
        res = subprocess.run(["docker", *args], input=input, capture_output=True, text=True, env=env,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def sdk(self) -> DockerClient:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=60)

    def api(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        """One raw Engine API call; returns (status, decoded JSON or text)."""
        import http.client

        class Conn(http.client.HTTPConnection):
            def connect(inner) -> None:
                inner.sock = socket.socket(socket.AF_UNIX)
                inner.sock.settimeout(60)
                inner.sock.connect(self.sock)

        conn = Conn("localhost")
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def netns_exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, *args], capture_output=True, text=True,
                              check=check)


@contextmanager
def private_daemon(tag: str, extra_args: list[str] | None = None, start: bool = True) -> Iterator[Daemon]:
    """A Daemon in a namespace of its own, destroyed afterwards even on failure."""
    d = Daemon(tag, extra_args=extra_args)
    d.create_netns()
    try:
        if start:
            d.start()
        yield d
    finally:
        d.destroy()


def unmount_below(root: Path) -> None:
    """Detach every mount at or below `root`, deepest first, so that removing the tree never
    reaches through a bind mount into its source."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    prefix = str(root).rstrip("/") + "/"
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def kill_port_proxies(below: Path | str) -> None:
    """End the port proxy processes serving an exec root at or below `below` (they outlive daemons)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"coracle.network.portproxy" in argv and any(a.startswith(str(below).encode()) for a in argv):
                with suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)


def kill_cgroup_tree(parent: str) -> None:
    """Kill every process under a cgroup parent and remove it everywhere (the engine's own Manager.destroy)."""
    from coracle import cgroups
    from coracle.errors import CoracleError

    with suppress(CoracleError):  # best effort in a teardown: what is left shows up in the leak checks
        cgroups.manager_for(parent).destroy()
