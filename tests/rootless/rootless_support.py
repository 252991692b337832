"""A throwaway ordinary user running a rootless coracled, and everything it needs.

`RootlessUser` creates the user (home under /tmp), its subordinate id ranges,
its XDG_RUNTIME_DIR, an interpreter it can read (a venv of Debian's
/usr/bin/python3 that finds this checkout), and a private "host": a network
namespace with a default route to a second namespace playing a machine on the
LAN, so that pasta has an uplink to copy and nothing touches this machine's
network. The daemon and the clients run as that user (setpriv) in that host
namespace, in a mount namespace of their own where /dev/net/tun is a 0666
node (the machine's is 0600).

`destroy()` kills every process of the user and of its subordinate ids, then
removes the namespaces, the ranges, the user, its home and its runtime dir,
and reports what it could not (the tests assert nothing is left).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import harness

SUBID_BASE = 400_000  # first subordinate id the tests hand out (above Debian's per-user ranges)
SUBID_COUNT = 65_536
LAN_HOST, LAN_PEER = "10.231.0.2", "10.231.0.1"  # the user's host and its LAN neighbour


def _free_subid_start() -> int:
    taken = []
    for path in ("/etc/subuid", "/etc/subgid"):
        if os.path.exists(path):
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3:
                    taken.append(int(parts[1]) + int(parts[2]))
    return max([SUBID_BASE, *taken])


def until(check: Callable[[], str], timeout: float = 30) -> str:
    """check() until it says something (or `timeout` passed): what it said last."""
    deadline = time.monotonic() + timeout
    while True:
        out = check()
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def processes_of(ids: range) -> list[int]:
    """PIDs whose real uid is in `ids`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration, ValueError):
            continue
        if uid in ids:
            found.append(int(entry))
    return found


class RootlessUser:
    def __init__(self, tag: str) -> None:
        self.name = f"crl{tag}"[:31]
        self.root = Path(f"/tmp/coracle-rootless-{tag}")
        self.home = self.root / "home"
        self.venv = self.root / "venv"
        self.tun = self.root / "tun"
        self.host_ns, self.lan_ns = f"rlh{tag}"[:15], f"rll{tag}"[:15]
        self.uid = self.gid = -1
        self.subid = _free_subid_start()
        self.runtime_dir = ""
        self.daemon: subprocess.Popen | None = None
        self.log = self.root / "coracled.log"

    # ----- making ------------------------------------------------------------

    def create(self) -> None:
        self.root.mkdir(mode=0o755)
        subprocess.run(["useradd", "--no-user-group", "-g", "users", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0",
                        "-m", "-d", str(self.home), "-s", "/bin/sh",
                        self.name], check=True, capture_output=True)
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        last = self.subid + SUBID_COUNT - 1
        subprocess.run(["usermod", "--add-subuids", f"{self.subid}-{last}", "--add-subgids", f"{self.subid}-{last}",
                        self.name], check=True, capture_output=True)
        self.runtime_dir = f"/run/user/{self.uid}"
        shutil.rmtree(self.runtime_dir, ignore_errors=True)  # left by an earlier user of this uid, now gone
        os.makedirs(self.runtime_dir, mode=0o700)
        os.chown(self.runtime_dir, self.uid, self.gid)
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(self.venv)], check=True)
        site = next(self.venv.glob("lib/python3*/site-packages"))
        (site / "coracle-checkout.pth").write_text(f"{harness.REPO / 'src'}\n{sysconfig.get_paths()['purelib']}\n")
        os.mknod(self.tun, 0o666 | 0o020000, os.makedev(10, 200))
        os.chmod(self.tun, 0o666)
        self._make_network()

    def _make_network(self) -> None:
        def ip(*args: str) -> None:
            subprocess.run(["ip", *args], check=True, capture_output=True)

        ip("netns", "add", self.host_ns)
        ip("netns", "add", self.lan_ns)
        ip("link", "add", "eth0", "netns", self.host_ns, "type", "veth", "peer", "name", "eth0", "netns", self.lan_ns)
        for ns, addr in ((self.host_ns, LAN_HOST), (self.lan_ns, LAN_PEER)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.host_ns, "route", "add", "default", "via", LAN_PEER)

    # ----- running as the user -----------------------------------------------

    def env(self, **extra: str) -> list[str]:
        base = {"HOME": str(self.home), "USER": self.name, "XDG_RUNTIME_DIR": self.runtime_dir,
                "PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
        return ["env", "-i", *(f"{k}={v}" for k, v in {**base, **extra}.items())]

    def as_user(self, argv: list[str], tun: bool = True, **env: str) -> list[str]:
        """argv run as the user in its host namespace (and with a usable /dev/net/tun)."""
        inner = ["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), "--init-groups",
                 *self.env(**env), *argv]
        if tun:
            inner = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                     f'mount --bind "{self.tun}" /dev/net/tun && exec "$@"', "sh", *inner]
        return ["nsenter", f"--net=/run/netns/{self.host_ns}", *inner]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def sock(self) -> str:
        return f"{self.runtime_dir}/coracle.sock"

    def start_daemon(self, *args: str, tun: bool = True, wait: bool = True) -> None:
        with open(self.log, "ab") as log:
            self.daemon = subprocess.Popen(self.as_user([self.python, "-m", "coracle.daemon", *args], tun=tun),
                                           stdout=log, stderr=log, start_new_session=True)
        if wait:
            deadline = time.monotonic() + 60
            while not harness._ping(self.sock):
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rootless coracled did not start:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.05)

    def stop_daemon(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(30)

    def run(self, argv: list[str], check: bool = True, timeout: float = 90, input: str | None = None,
            **env: str) -> subprocess.CompletedProcess:
        res = subprocess.run(self.as_user(argv, True, **env), capture_output=True, text=True, timeout=timeout,
                             input=input)
        if check and res.returncode:
            raise AssertionError(f"{' '.join(argv)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def coracle(self, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
        """The native CLI, finding the daemon through CORACLE_HOST."""
        return self.run([self.python, "-m", "coracle.cli.main", *args], check=check,
                        CORACLE_HOST=f"unix://{self.sock}", **kw)

    def docker(self, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
        """The docker CLI, finding the daemon through DOCKER_HOST."""
        return self.run(["docker", *args], check=check, DOCKER_HOST=f"unix://{self.sock}", **kw)

    def lan(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command on the LAN neighbour (root, in its own namespace)."""
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.lan_ns}", *argv], capture_output=True,
                              text=True, check=check, timeout=60)

    def on_host(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command in the user's host network namespace, as root (a witness)."""
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.host_ns}", *argv], capture_output=True,
                              text=True, check=check, timeout=60)

    # ----- removing -----------------------------------------------------------

    def ids(self) -> list[range]:
        return [range(self.uid, self.uid + 1), range(self.subid, self.subid + SUBID_COUNT)]

    def leftovers(self) -> list[int]:
        return [pid for ids in self.ids() for pid in processes_of(ids)] if self.uid >= 0 else []

    def destroy(self) -> list[str]:
        """Remove everything; returns what was left behind (empty when clean)."""
        problems = []
        deadline = time.monotonic() + 15
        while (pids := self.leftovers()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.daemon:
                self.daemon.poll()  # reap it: the daemon is our child
            time.sleep(0.05)
        for pid in self.leftovers():
            try:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()[:3]
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            problems.append(f"process left: {pid} {status} {cmdline}")
        for ns in (self.host_ns, self.lan_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.uid >= 0:
            last = self.subid + SUBID_COUNT - 1
            subprocess.run(["usermod", "--del-subuids", f"{self.subid}-{last}", "--del-subgids",
                            f"{self.subid}-{last}", self.name], capture_output=True)
            subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True)
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        for path in (self.root, Path(self.runtime_dir or "/nonexistent")):
            if path.exists():
                problems.append(f"{path} left")
        return problems


def files_on_host(root: Path, name: str) -> list[os.stat_result]:
    """The files called `name` under the data root, outside its trash.

    Removed containers' directories go to the trash and are deleted by the daemon in the
    background, so a walk through it can race their deletion."""
    found = []
    for top, dirs, files in os.walk(root):
        if top == str(root) and "trash" in dirs:
            dirs.remove("trash")
        if name in files:
            found.append(os.stat(os.path.join(top, name), follow_symlinks=False))
    return found
