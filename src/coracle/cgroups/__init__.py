"""Container cgroups: one Manager interface, cgroup v1 and v2 side by side.

    cls = detect()                    # V1Manager or V2Manager for this host
    m = manager_for("coracle/<id>")   # an instance of it
    m.create(); m.apply(pid); m.set(Resources.from_host_config(host_config))
"""

from __future__ import annotations

import os

from coracle import rootless
from coracle.cgroups import delegation
from coracle.cgroups.manager import Manager, normalize
from coracle.cgroups.resources import Resources
from coracle.cgroups.v1 import V1Manager, mount_table
from coracle.cgroups.unconfined import Unconfined
from coracle.cgroups.v2 import V2Manager
from coracle.errors import SystemError_

DEFAULT_ROOT = "/sys/fs/cgroup"

__all__ = ["Manager", "Resources", "V1Manager", "V2Manager", "detect", "driver", "manager_for", "list_children"]


def detect(root: str = DEFAULT_ROOT) -> type[Manager]:
    """V2Manager when root is a cgroup2 mount with controllers, else V1Manager
    when v1 hierarchies are mounted under root (also on hybrid hosts whose
    cgroup2 at root/unified has no controllers)."""
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            if f.read().split():
                return V2Manager
    except FileNotFoundError:
        pass
    if mount_table.hierarchies(root):
        return V1Manager
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return V2Manager  # cgroup2 without controllers: joining and freezing still work
    raise SystemError_(f"no cgroup filesystem is mounted at {root}")


def manager_for(path: str, root: str = DEFAULT_ROOT) -> Manager:
    """The cgroup `path` of a container. A rootless daemon's paths are relative to its
    delegated subtree, which is the manager's root (so controllers are enabled from there
    down, never above it); without one its containers are Unconfined."""
    if rootless.active():
        d = delegation.current()
        return V2Manager(path, d.directory) if d else Unconfined(path, root)
    return detect(root)(path, root)


def driver() -> str:
    """The CgroupDriver `info` reports: "none" for a rootless daemon without a delegated subtree."""
    return "none" if rootless.active() and delegation.current() is None else "cgroupfs"


def list_children(parent: str, root: str = DEFAULT_ROOT) -> list[str]:
    """Relative paths of the cgroups directly under `parent` in any hierarchy
    (a half-created or half-removed one shows up too): the daemon compares
    them with its containers to find orphans."""
    parent = normalize(parent)
    found: set[str] = set()
    for d in manager_for(parent, root).dirs():
        try:
            found.update(e.name for e in os.scandir(d) if e.is_dir())
        except FileNotFoundError:
            continue
    return sorted(f"{parent}/{name}" for name in found)
