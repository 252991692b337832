"""A cgroup made ahead for the monitor's spare child, so that a start renames instead of moving (cgroup v1).

Why: putting a process into a v1 cgroup (a write to cgroup.procs) takes the kernel's
threadgroup lock for writing, which waits for an RCU grace period unless another move has
just happened: 11-20 ms of every start on an idle 2-core machine, slept rather than
computed (docs/performance.md). The monitor keeps a spare child that forks the next
container's PID 1 (coracle.runtime.init.serve_spare). Between starts, the daemon makes a
cgroup "<parent>/spare-<token>" and the spare moves itself into it; the next container's
PID 1 is born there, and its start renames that cgroup, hierarchy by hierarchy, to the
container's own "<parent>/<id>" (v1 allows a rename within one parent: 0.1 ms for all of
them). PID 1 is in its container's cgroups before any user code runs, as before.

Anything else falls back to moving PID 1 at start: a container under another parent, a
spare that was not staged (an exec took it, or two starts came together), cgroup v2 (which
cannot rename a cgroup), a refused rename. The empty spare cgroups this leaves are swept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable

from coracle.cgroups.manager import Manager
from coracle.errors import CoracleError

log = logging.getLogger(__name__)

PREFIX = "spare-"


def is_spare(path: str) -> bool:
    """Whether a cgroup path (or name) is a spare child's (`system check` leaves these to the daemon)."""
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(PREFIX)


def placement(pid: int) -> dict[str, str]:
    """Controller (or "name=...") -> the process's cgroup path in that v1 hierarchy, from /proc."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                if controller:
                    out[controller] = path.strip("/")
    return out


def rename_into(mounts: dict[str, str], target: str, pid: int) -> bool:
    """Rename the spare cgroup `pid` was born in to `target` in every hierarchy of `mounts`
    (controller -> mount point); False, touching nothing, when it is not in one spare cgroup of
    `target`'s parent in all of them. OSError: a rename was refused (the caller moves `pid`)."""
    try:
        where = placement(pid)
    except (OSError, ValueError):
        return False
    born = {where.get(controller) for controller in mounts}
    if len(born) != 1:
        return False
    path = born.pop()
    if path is None or not is_spare(path) or path.rpartition("/")[0] != target.rpartition("/")[0]:
        return False
    for mountpoint in dict.fromkeys(mounts.values()):
        os.rename(os.path.join(mountpoint, path), os.path.join(mountpoint, target))
    return True


def sweep(parent_dirs: list[str], keep: str) -> None:
    """Remove the empty spare cgroups under each hierarchy's parent directory but `keep`
    (the kernel refuses to remove one that still holds a process: that one is in use)."""
    for d in parent_dirs:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(d):
                if entry.name != keep and is_spare(entry.name) and entry.is_dir():
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)


class Stager:
    """Gives the monitor's spare child a cgroup of its own, off the start path, one at a time.

    `offer(dirs)` asks the monitor to move its spare into `dirs`; it answers False when there
    is no spare, or the spare already has a cgroup (then the new one is removed again);
    `offer([])` only asks, so that a staged spare costs no cgroup made and removed.

    When matters: the spare's move holds the kernel's cgroup mutex through its grace period,
    so any cgroup work of the daemon meanwhile (the removal of an exited container's cgroup)
    waits for it. After a start the staging waits a moment (`soon(delay)`); a container that
    exits within it calls `soon()` once its cgroup is gone, which stages at once, in the
    quiet time before the next start.
    """

    def __init__(self, cgroups_for: Callable[[str], Manager], parent: str,
                 offer: Callable[[list[str]], bool]) -> None:
        self._cgroups_for, self._parent, self._offer = cgroups_for, parent, offer
        self._busy = threading.Lock()
        self._now = threading.Event()

    def soon(self, delay: float = 0.0) -> None:
        """Stage the current spare in the background after `delay` seconds; a staging already
        waiting is told to go now when `delay` is 0, else left as it is."""
        if not self._busy.acquire(blocking=False):
            if not delay:
                self._now.set()
            return
        self._now.clear()
        threading.Thread(target=self._stage, args=(delay,), name="spare-cgroup", daemon=True).start()

    def _stage(self, delay: float) -> None:
        try:
            if delay:
                self._now.wait(delay)
            name = PREFIX + secrets.token_hex(6)
            cgroup = self._cgroups_for(f"{self._parent}/{name}")
            if not cgroup.renames or not self._offer([]):
                return
            cgroup.create()
            if not self._offer(cgroup.dirs()):
                cgroup.destroy()
            sweep([os.path.dirname(d) for d in cgroup.dirs()], keep=name)
        except (OSError, CoracleError) as exc:  # the next start moves its PID 1 instead
            log.debug("no cgroup for the spare child: %s", exc)
        finally:
            self._busy.release()
