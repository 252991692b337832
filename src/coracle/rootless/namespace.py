"""The daemon's way into its user's rootless namespaces (see holder.py for who holds them).

`enter(exec_root)` runs first thing in coracled, while the process is still
single-threaded (the kernel refuses setns into a user or mount namespace
otherwise): it finds the user's holder, or starts one, and joins its user and
mount namespaces, becoming root there. The network namespace is joined
separately, by `enter_network`, once the container monitor has been started:
the monitor stays in the user's host network namespace so that
`--network host` containers get exactly that one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from coracle.cgroups import delegation
from coracle.errors import SystemError_
from coracle.rootless.holder import start_ticks
from coracle.runtime import syscalls as sc

TUN = "/dev/net/tun"


def check_tun() -> None:
    """pasta needs the tun device; without udev it is often 0600 root."""
    if not os.access(TUN, os.R_OK | os.W_OK):
        raise SystemError_(
            f"{TUN} is not readable and writable by you: rootless networking (pasta) needs it. "
            f"As root: chmod 0666 {TUN} (its mode on systems with udev), and to keep it after a reboot, "
            f"echo 'KERNEL==\"tun\", MODE=\"0666\"' > /etc/udev/rules.d/50-tun.rules")


def _running_holder(state_dir: str) -> dict[str, int] | None:
    """The holder recorded in holder.json, if that very process (same start time) still runs, with the
    keepers of its namespaces (a holder killed outright stays a zombie until its parent goes)."""
    try:
        with open(os.path.join(state_dir, "holder.json")) as f:
            state = json.load(f)
        if start_ticks(state["holder"]) == state["ticks"] and \
                all(_alive(state[k]) for k in ("holder", "namespaces", "network")):
            return {k: int(v) for k, v in state.items()}
    except (OSError, ValueError, KeyError, IndexError):
        pass
    return None


def _start_holder(exec_root: str) -> None:
    check_tun()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME")}
    holder = subprocess.Popen([sys.executable, "-I", "-m", "coracle.rootless.holder", exec_root],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True, close_fds=True, env=env, cwd="/")
    assert holder.stdout is not None and holder.stderr is not None
    ready = holder.stdout.readline().strip()
    if ready != b"ready":
        holder.wait()
        message = holder.stderr.read().decode(errors="replace").strip().splitlines()
        raise SystemError_(f"cannot set up the rootless namespaces: {message[-1] if message else 'no reason given'}")
    holder.stdout.close()
    holder.stderr.close()


def _user_namespace(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/user")


def _end_stale_set(exec_root: str) -> None:
    """End what is left of the namespace set of a holder that is gone: the container monitor, its
    keeper and the containers, all in that set's user namespace.

    They cannot be used any more: their network has no uplink, and this daemon, root of the new
    user namespace only, could neither reach their namespaces nor wire new containers made by a
    monitor in the old one. The holder promises their end with its own ("what a reboot does");
    a holder killed outright could not keep it, so the next daemon does, before it makes the new
    set. This process is still the user in the host's namespaces, the owner of that user
    namespace, so it may signal every process in it (user_namespaces(7))."""
    try:
        with open(os.path.join(exec_root, "monitor", "keeper.pid")) as f:
            keeper = int(f.read())
        with open(f"/proc/{keeper}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        stale = _user_namespace(keeper)
    except (OSError, ValueError):
        return
    if b"coracle.runtime.keeper" not in cmdline or exec_root.encode() not in cmdline or \
            stale == _user_namespace("self"):
        return  # not a keeper of this exec root in a namespace set (a reused PID)
    for _ in range(50):
        members = [keeper] if _alive(keeper) else []  # first: it would restart the monitor
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if entry.isdigit() and _user_namespace(entry) == stale:
                    members.append(int(entry))
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def enter(exec_root: str) -> int:
    """Join the user and mount namespaces as root; returns a descriptor of the network namespace."""
    state_dir = os.path.join(exec_root, "rootless")
    state = _running_holder(state_dir)
    if state is None:
        _end_stale_set(exec_root)
        _start_holder(exec_root)
        state = _running_holder(state_dir)
        if state is None:
            raise SystemError_(f"the rootless holder exited at once (see {state_dir}/holder.log)")
    fds = [os.open(f"/proc/{state['namespaces']}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("user", "mnt")]
    net = os.open(f"/proc/{state['network']}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    for fd, kind in zip(fds, (sc.CLONE_NEWUSER, sc.CLONE_NEWNS), strict=True):
        sc.setns(fd, kind)
        os.close(fd)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    delegation.set_up()  # before the monitor starts: coracle's processes leave the delegated cgroup
    return net


def enter_network(fd: int) -> None:
    """Move the daemon (its threads from now on) into the rootless network namespace."""
    sc.setns(fd, sc.CLONE_NEWNET)
    os.close(fd)
