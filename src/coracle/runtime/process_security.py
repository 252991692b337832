"""Process security applied in the container's first process (and each exec), just before exec.

`prepare` runs while still root (before the identity switch), `finish` after
it. The order is forced by the kernel:

- the bounding set can only be cut while CAP_SETPCAP is held, so in prepare;
- a seccomp filter without no_new_privs may only be installed by a process
  holding CAP_SYS_ADMIN, so when no_new_privs is off (Docker's default, which
  keeps setuid binaries working) the filter goes in at the end of prepare and
  must, and does, allow what follows (setgroups, setuid, capset, execve);
- with no_new_privs on, no privilege is needed and the filter is the very
  last thing before exec, in finish;
- effective/permitted are set after the uid switch, which already cleared
  them for a non-root user.
"""

from __future__ import annotations

import resource
from typing import Any

from coracle.runtime import capabilities, seccomp
from coracle.runtime import syscalls as sc
from coracle.runtime.spec import Process

# Docker's --ulimit names -> resource numbers (asm-generic, as on x86 and arm;
# Python's resource module lacks some of them, e.g. RLIMIT_LOCKS).
RLIMITS = {
    "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7, "memlock": 8,
    "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14, "rttime": 15,
}


def _set_rlimits(rlimits: list[dict[str, Any]]) -> None:
    for limit in rlimits:
        name = limit["Name"]
        try:
            resource.setrlimit(RLIMITS[name], (limit["Soft"], limit["Hard"]))
        except (ValueError, OSError) as exc:
            raise OSError(f"cannot set ulimit {name}={limit['Soft']}:{limit['Hard']}: {exc}") from None


def _seccomp(proc: Process) -> None:
    if proc.seccomp is None:
        return
    seccomp.load(proc.seccomp, _held(proc), proc.no_new_privileges)


def _held(proc: Process) -> list[str]:
    return proc.capabilities if proc.capabilities is not None else capabilities.bounding()


def precompile(proc: Process) -> None:
    """In the monitor, before it forks: compile the filter so the child inherits it ready-made."""
    if proc.seccomp is not None:
        seccomp.compile_bpf(proc.seccomp, _held(proc), proc.no_new_privileges)


def prepare(proc: Process) -> None:
    """As root, before the uid switch: rlimits, bounding set, and seccomp unless no_new_privs."""
    _set_rlimits(proc.rlimits)
    if proc.capabilities is not None:
        capabilities.limit_bounding(proc.capabilities)
    if not proc.no_new_privileges:
        _seccomp(proc)


def finish(proc: Process) -> None:
    """After the uid switch: effective/permitted sets, then no_new_privs and its seccomp filter."""
    if proc.capabilities is not None:
        capabilities.set_process(proc.capabilities)
    if proc.no_new_privileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        _seccomp(proc)
