"""Entering a running container the way an exec does: its cgroups, then its namespaces.

One home for the exec child and the confined helper. The namespaces are
opened through a descriptor of the container's /proc directory, all before
the first setns (/proc changes meaning on the way), after checking that the
PID still names the container's process: if it was reused by a host process,
or names no mount namespace of its own, nothing is entered.
"""

from __future__ import annotations

import errno
import os

from coracle.runtime import syscalls as sc
from coracle.runtime import userns

ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt")  # user first: it owns the others


class Gone(ProcessLookupError):
    """The process is not the container's any more (it exited, or its PID was reused)."""

    def __init__(self) -> None:
        super().__init__(errno.ESRCH, "the container is not running")


def enter(pid: int, cgroup_dirs: list[str], start_ticks: int | None = None) -> None:
    """Join the container whose PID 1 is `pid` (started at `start_ticks`, when known)."""
    try:
        proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Gone() from None
    try:
        with open(os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc), "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        if (start_ticks is not None and ticks != start_ticks) or \
                os.readlink("ns/mnt", dir_fd=proc) == os.readlink("/proc/self/ns/mnt"):
            raise Gone()
        for d in cgroup_dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        handles = [(os.open(f"ns/{ns}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc), sc.NAMESPACES[ns])
                   for ns in ORDER if os.readlink(f"ns/{ns}", dir_fd=proc) != os.readlink(f"/proc/self/ns/{ns}")]
    finally:
        os.close(proc)
    for fd, kind in handles:
        sc.setns(fd, kind)
        os.close(fd)
    if any(kind == sc.CLONE_NEWUSER for _, kind in handles):
        userns.become_root()
    os.chdir("/")
