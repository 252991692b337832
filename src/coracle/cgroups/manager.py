"""The cgroup Manager interface and what v1 and v2 do alike.

A Manager owns one container's cgroup, named by a path relative to the
cgroup root (e.g. "coracle/<id>"). On cgroup v1 that path exists once per
hierarchy; on v2 once. Everything that only depends on "the set of
directories" (joining, listing, signalling, removal) lives here; what depends
on the interface files lives in v1.py and v2.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from coracle.cgroups import cgroupfs
from coracle.cgroups.devices import DeviceRule
from coracle.cgroups.resources import Resources
from coracle.errors import InvalidParameter, NotFound, SystemError_

SETTLE_TIMEOUT = 5.0  # seconds to wait for the kernel to freeze/empty a cgroup
_POLL = 0.01


def normalize(path: str) -> str:
    """A cgroup path relative to the root; refuses anything that could escape it."""
    parts = [p for p in path.strip().split("/") if p and p != "."]
    if not parts or ".." in parts:
        raise InvalidParameter(f"invalid cgroup path {path!r}")
    return "/".join(parts)


def wait_until(done: Callable[[], object], what: str, nudge: Callable[[], object] | None = None) -> None:
    """Poll `done()` until true; `nudge()` re-asks the kernel between polls."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise SystemError_(f"timed out waiting for the cgroup to {what}")
        if nudge:
            nudge()
        time.sleep(_POLL)


class Manager(ABC):
    """One container's cgroup. Subclasses: V1Manager, V2Manager."""

    # Whether memory.oom_control-style "never OOM-kill" exists (v2 has no equivalent).
    oom_kill_disable_supported = True
    # Whether a cgroup can be renamed within its parent (v1 only): see coracle.cgroups.spare.
    renames = False

    def __init__(self, path: str, root: str = "/sys/fs/cgroup") -> None:
        self.path = normalize(path)
        self.root = root

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, root={self.root!r})"

    # -- per-version ------------------------------------------------------

    @abstractmethod
    def dirs(self) -> list[str]:
        """The absolute directories of this cgroup (one per v1 hierarchy, one on v2)."""

    @abstractmethod
    def create(self) -> None:
        """Make the cgroup (and missing parents) so that a process can join it."""

    @abstractmethod
    def _file(self, controller: str, name: str, what: str) -> str:
        """The path of a controller's interface file, or a clear error if the host lacks it."""

    @abstractmethod
    def _write_memory(self, r: Resources, fresh: bool) -> None:
        """Memory, swap, reservation and OOM-killer settings in this version's files."""

    @abstractmethod
    def _write_cpu(self, r: Resources) -> None:
        """Shares/weight and quota/period in this version's files."""

    @abstractmethod
    def _write_io_weight(self, weight: int) -> None:
        """The block I/O weight (blkio.* on v1, io.* on v2)."""

    def _write_limits(self, r: Resources, fresh: bool) -> None:
        """Write the limits `r` asks for; `fresh` applies creation-time defaults."""
        # cpuset first: a cpu quota is judged against the CPUs the cgroup may use.
        if r.cpuset_cpus:
            cgroupfs.write(self._file("cpuset", "cpuset.cpus", "cpuset"), r.cpuset_cpus, "cpuset cpus")
        if r.cpuset_mems:
            cgroupfs.write(self._file("cpuset", "cpuset.mems", "cpuset"), r.cpuset_mems, "cpuset mems")
        self._write_memory(r, fresh)
        self._write_cpu(r)
        if r.pids_limit:
            value = r.pids_limit if r.pids_limit > 0 else "max"
            cgroupfs.write(self._file("pids", "pids.max", "pids limit"), value, "pids limit")
        if r.blkio_weight:
            self._write_io_weight(r.blkio_weight)

    @abstractmethod
    def set_devices(self, rules: list[DeviceRule]) -> None:
        """Allow exactly these device nodes (deny everything else)."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Usage in the shape of Docker's /containers/{id}/stats (memory, cpu, pids, blkio)."""

    @abstractmethod
    def oom_killed(self) -> bool:
        """True once the kernel OOM-killed a process of this cgroup."""

    @abstractmethod
    def freeze(self) -> None:
        """Stop every process (pause); returns once the kernel reports them frozen."""

    @abstractmethod
    def thaw(self) -> None:
        """Resume after freeze (unpause); returns once the kernel reports them thawed."""

    # -- shared -----------------------------------------------------------

    def set(self, r: Resources) -> None:
        """Apply the limits of a new container (unset fields keep the kernel's defaults)."""
        r.validate()
        self._write_limits(r, fresh=True)

    def update(self, r: Resources) -> None:
        """Change limits of a live container (`docker update`): unset fields are left alone."""
        r.validate(update=True)
        self._write_limits(r, fresh=False)

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())

    def adopt(self, pid: int) -> bool:
        """Take over the spare cgroup `pid` was born in (coracle.cgroups.spare), or False: then
        `create` and `apply` must put it in this one."""
        return False

    def apply(self, pid: int) -> None:
        """Move a process (and, with it, its future children) into the cgroup."""
        for d in self.dirs():
            try:
                cgroupfs.write(os.path.join(d, "cgroup.procs"), pid, f"cgroup of process {pid}")
            except (InvalidParameter, SystemError_):
                if not os.path.exists(f"/proc/{pid}"):
                    raise NotFound(f"process {pid} does not exist") from None
                if not os.path.isdir(d):
                    raise NotFound(f"cgroup {self.path} does not exist") from None
                raise

    def procs(self) -> list[int]:
        """Every process in the cgroup or below it, each once, sorted."""
        found: set[int] = set()
        for d in self.dirs():
            for dirpath, _, names in os.walk(d):
                if "cgroup.procs" in names:
                    with contextlib.suppress(FileNotFoundError):  # removed while walking
                        found.update(cgroupfs.read_ints(os.path.join(dirpath, "cgroup.procs")))
        return sorted(found)

    def kill_all(self, sig: int) -> None:
        """Send `sig` to every process; processes that already exited are skipped."""
        for pid in self.procs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def destroy(self) -> None:
        """Kill what is left, then remove the cgroup (and any child cgroups) everywhere.

        Idempotent. The parent is left in place: it is shared with other containers.
        """
        if not self.exists() or self._removed_at_once():
            return
        if self.procs():
            self.kill_all(signal.SIGKILL)
            wait_until(lambda: not self.procs(), "empty after SIGKILL")
        for d in self.dirs():
            _remove_tree(d)

    def _removed_at_once(self) -> bool:
        """Remove an empty cgroup without children in one rmdir per directory, the usual case
        once a container's PID 1 is gone (a walk of every hierarchy for processes cost a
        millisecond of each exit); False when any is refused, for `destroy` to handle."""
        for d in self.dirs():
            try:
                os.rmdir(d)
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True


def _remove_tree(top: str) -> None:
    """rmdir a cgroup and its descendants, deepest first; EBUSY is retried briefly
    because the kernel releases a cgroup a moment after its last task exits."""
    if not os.path.isdir(top):
        return
    for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    reason = os.strerror(e.errno or 0)
                    raise SystemError_(f"cannot remove cgroup {dirpath}: {reason}") from None
                time.sleep(_POLL)
