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

import json
import os
import subprocess
import sys

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
    """The holder recorded in holder.json, if that very process (same start time) still runs."""
    try:
        with open(os.path.join(state_dir, "holder.json")) as f:
            state = json.load(f)
        if start_ticks(state["holder"]) == state["ticks"]:
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


def enter(exec_root: str) -> int:
    """Join the user and mount namespaces as root; returns a descriptor of the network namespace."""
    state_dir = os.path.join(exec_root, "rootless")
    state = _running_holder(state_dir)
    if state is None:
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
    return net


def enter_network(fd: int) -> None:
    """Move the daemon (its threads from now on) into the rootless network namespace."""
    sc.setns(fd, sc.CLONE_NEWNET)
    os.close(fd)
