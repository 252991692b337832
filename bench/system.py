"""Host-side plumbing shared by every engine: namespaces, process accounting, clean-up.

The bench shells out to ip(8), nsenter and nft on purpose: it is a measuring
tool standing outside the engines, and these are independent witnesses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Directories Docker/containerd/runc/netavark create under /run whatever their flags say.
TRANSIENT_RUN_DIRS = ["/run/docker", "/run/containerd", "/run/runc", "/run/containers"]
HOST_ADDR = "10.253.0.1"  # the throwaway host's own address, for published ports
HOST_PREFIX = 24


def sh(*args: str, check: bool = True, timeout: float | None = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout, **kw)


# ----- the throwaway host ---------------------------------------------------------


def create_host_netns(name: str) -> None:
    """A fresh netns acting as the engine's host: lo up plus a link holding HOST_ADDR.

    The link is one end of a veth pair whose peer stays in the same netns (the
    kernel here has no dummy driver): it only has to carry the host's address.
    """
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    sh("ip", "-n", name, "link", "add", "bhost0", "type", "veth", "peer", "name", "bhost1")
    sh("ip", "-n", name, "addr", "add", f"{HOST_ADDR}/{HOST_PREFIX}", "dev", "bhost0")
    for link in ("bhost0", "bhost1"):
        sh("ip", "-n", name, "link", "set", link, "up")


def delete_netns(name: str) -> None:
    sh("ip", "netns", "del", name, check=False)


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def _cgroup_mount_script() -> str:
    """Shell lines that re-mount this machine's cgroup hierarchies after `ip netns exec`.

    `ip netns exec` mounts a fresh sysfs over /sys (so /sys/class/net shows the
    namespace's links), which hides /sys/fs/cgroup; daemons need both.
    """
    lines = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            mnt = left.split()[4]
            fstype, _src, opts = right.split()[:3]
            if mnt == str(CGROUP_ROOT) and fstype == "tmpfs":
                lines.append(f"mount -t tmpfs -o mode=755 tmpfs {mnt}")
            elif mnt.startswith(f"{CGROUP_ROOT}/") and fstype in ("cgroup", "cgroup2"):
                words = [o for o in opts.split(",") if o not in ("rw", "ro")]
                if fstype == "cgroup" and all(w.startswith("name=") for w in words):
                    words.insert(0, "none")
                opt = f"-o {','.join(words)} " if words and fstype == "cgroup" else ""
                lines.append(f"mkdir -p {mnt} && mount -t {fstype} {opt}{fstype} {mnt}")
    return " && ".join(lines) if lines else "true"


def in_netns_argv(netns: str, argv: list[str]) -> list[str]:
    """argv for a daemon living in `netns` with that netns's /sys and the host's cgroups."""
    return ["ip", "netns", "exec", netns, "sh", "-c", f'{_cgroup_mount_script()} && exec "$@"', "sh", *argv]


def nsenter_argv(netns_path: str, argv: list[str]) -> list[str]:
    """argv for a short-lived tool in a network namespace (cheap: no new mount ns)."""
    return ["nsenter", f"--net={netns_path}", *argv]


# ----- processes ------------------------------------------------------------------


@dataclass
class Proc:
    pid: int
    comm: str
    rss_kib: int
    pss_kib: int


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def pids_in_netns(inode: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                out.append(int(entry))
        except OSError:
            pass
    return out


def proc_info(pid: int) -> Proc | None:
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields.get("VmRSS", "0 kB").split()[0])
    pss = 0
    rollup = _read(f"/proc/{pid}/smaps_rollup") or ""
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return Proc(pid, fields.get("Name", "?").strip(), rss, pss)


def engine_processes(inode: int) -> list[Proc]:
    """Every live process in the engine's host netns: daemons, shims, proxies, monitors.

    Container processes live in their own netns and so are not counted; zombies
    (no RSS) are left out.
    """
    procs = []
    for pid in pids_in_netns(inode):
        if pid == os.getpid():
            continue
        info = proc_info(pid)
        if info and info.rss_kib > 0:
            procs.append(info)
    return procs


def kill_netns_processes(inode: int) -> None:
    for _ in range(20):
        pids = [p for p in pids_in_netns(inode) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def stop_pid(pid: int, timeout: float = 20) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "State:\tZ" in (_read(f"/proc/{pid}/status") or ""):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ----- cgroups, mounts, files ---------------------------------------------------------


UNIFIED = "/sys/fs/cgroup/unified"  # a hybrid host's v2 hierarchy, where runc also files Docker's containers


def kill_cgroup_tree(parent: str) -> None:
    """Kill everything under a cgroup parent and remove it (coracle's Manager.destroy does exactly that),
    and remove its directories in a hybrid host's v2 hierarchy, which runc makes beside the v1 ones and
    Manager.destroy does not know (their processes are the ones just killed)."""
    from coracle import cgroups
    from coracle.errors import CoracleError

    with contextlib.suppress(CoracleError):
        cgroups.manager_for(parent).destroy()
    for path, _dirs, _files in sorted(os.walk(os.path.join(UNIFIED, parent)), key=lambda d: -len(d[0])):
        with contextlib.suppress(OSError):
            os.rmdir(path)  # deepest first; a busy one stays, as Manager.destroy leaves a busy one


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever is still mounted below root in our mount namespace."""
    mounts = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        mnt = line.split()[4].replace("\\040", " ")
        if mnt == str(root) or mnt.startswith(f"{root}/"):
            mounts.append(mnt)
    for mnt in sorted(mounts, key=len, reverse=True):
        sh("umount", "-l", mnt, check=False)


def existing_run_dirs() -> set[str]:
    return {d for d in TRANSIENT_RUN_DIRS if os.path.exists(d)}


# ----- firewall witness -------------------------------------------------------------


def firewall_objects(netns: str) -> dict[str, int]:
    """Count nftables rules and set/map elements in a netns (iptables-nft rules included)."""
    res = sh("ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset", check=False)
    counts = {"rules": 0, "set_elements": 0}
    if res.returncode != 0 or not res.stdout.strip():
        return counts
    for obj in json.loads(res.stdout).get("nftables", []):
        if "rule" in obj:
            counts["rules"] += 1
        for kind in ("set", "map"):
            if kind in obj:
                counts["set_elements"] += len(obj[kind].get("elem", []))
    return counts


def describe_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return (prefix + " " if prefix else "") + shlex.join(argv)
