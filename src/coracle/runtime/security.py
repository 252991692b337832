"""Process security applied in the container's first process, just before exec.

`prepare` runs while still root (before the identity switch), `finish` after
it: the order matters because dropping capabilities first would forbid
setuid/setgid, and seccomp must be the very last thing before exec.
"""

from __future__ import annotations

from coracle.runtime import syscalls as sc
from coracle.runtime.spec import Process


def prepare(proc: Process) -> None:
    """Before the uid switch: nothing yet beyond what finish() does."""
    del proc


def finish(proc: Process) -> None:
    """After the uid switch: no_new_privs when asked (Docker keeps setuid working by default)."""
    if proc.no_new_privileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
