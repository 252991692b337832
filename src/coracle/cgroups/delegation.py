"""The cgroup v2 subtree delegated to a rootless daemon's user, if there is one.

An ordinary user can limit containers only inside a cgroup v2 subtree handed
to them (systemd's `Delegate=yes`, as user@UID.service gets): there its
directories and cgroup.procs / cgroup.subtree_control are the user's, and so
appear owned by root inside the rootless user namespace. Elsewhere (cgroup v1,
or a v2 cgroup of someone else) no cgroup file is writable and containers stay
Unconfined, their limits refused up front.

The delegated cgroup is the daemon's own (the "0::" line of
/proc/self/cgroup). cgroup v2 lets a cgroup either hold processes or enable
controllers for its children, never both; so, as Podman does, `prepare` moves
every process of that cgroup (daemon, holder, monitor, keeper, pasta) into a
leaf child, LEAF, before container cgroups are made beside it under the
configured cgroup parent: <own>/coracled holds coracle's own processes,
<own>/coracle/<id> a container. Which controllers the subtree got is read from
its cgroup.controllers: a limit needing one it lacks is refused by name.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

from coracle.cgroups import cgroupfs
from coracle.errors import CoracleError

DEFAULT_ROOT = "/sys/fs/cgroup"
LEAF = "coracled"  # the child holding coracle's own processes


@dataclass(frozen=True)
class Delegation:
    """A cgroup v2 subtree this process may manage: `own` relative to the cgroup2 mount."""

    mount: str
    own: str
    controllers: frozenset[str]

    @property
    def directory(self) -> str:
        return os.path.join(self.mount, self.own)

    def describe(self) -> str:
        return f"cgroup v2 subtree /{self.own} (controllers: {' '.join(sorted(self.controllers)) or 'none'})"


def _cgroup2_mount(root: str) -> str | None:
    """Where this host's cgroup2 with controllers is mounted: `root` on a unified host,
    root/unified on a hybrid one that left controllers to it; None on cgroup v1."""
    for mount in (root, os.path.join(root, "unified")):
        with contextlib.suppress(OSError):
            if cgroupfs.read(os.path.join(mount, "cgroup.controllers")).split():
                return mount
    return None


def _own_cgroup(proc_cgroup: str) -> str | None:
    """This process's cgroup v2 path ("0::/path" in /proc/self/cgroup), relative."""
    with open(proc_cgroup) as f:
        for line in f:
            hierarchy, _, path = line.rstrip("\n").partition(":")
            controllers, _, path = path.partition(":")
            if hierarchy == "0" and not controllers:
                return path.strip("/") or None
    return None


def _writable(directory: str) -> bool:
    """What managing a subtree needs: new children, moving processes, enabling controllers."""
    return all(os.access(p, os.W_OK) for p in (
        directory, os.path.join(directory, "cgroup.procs"), os.path.join(directory, "cgroup.subtree_control")))


def find(root: str = DEFAULT_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> Delegation | None:
    """The delegated subtree of this process, or None. A process already in LEAF (a daemon
    restarted by one that an earlier daemon moved there) is given the leaf's parent."""
    mount = _cgroup2_mount(root)
    own = _own_cgroup(proc_cgroup) if mount else None
    if mount is None or own is None:
        return None
    if os.path.basename(own) == LEAF:
        own = os.path.dirname(own)
        if not own:
            return None
    directory = os.path.join(mount, own)
    if not _writable(directory):
        return None
    try:
        controllers = frozenset(cgroupfs.read(os.path.join(directory, "cgroup.controllers")).split())
    except OSError:
        return None
    return Delegation(mount, own, controllers)


@functools.cache
def current() -> Delegation | None:
    """This daemon's delegation, looked up once (the answer cannot change while it runs)."""
    return find()


def prepare(d: Delegation) -> None:
    """Move every process of the delegated cgroup into its LEAF child, so that controllers
    can be enabled for the container cgroups made beside it (cgroup v2's no-internal-processes
    rule). Processes that exit meanwhile are skipped."""
    leaf = os.path.join(d.directory, LEAF)
    os.makedirs(leaf, exist_ok=True)
    for pid in cgroupfs.read_ints(os.path.join(d.directory, "cgroup.procs")):
        try:
            cgroupfs.write(os.path.join(leaf, "cgroup.procs"), pid, f"cgroup of process {pid}")
        except CoracleError:
            if os.path.exists(f"/proc/{pid}"):
                raise


def set_up() -> Delegation | None:
    """Run once by a rootless daemon at start-up: find its delegated subtree and prepare it."""
    d = current()
    if d is not None:
        prepare(d)
    return d
