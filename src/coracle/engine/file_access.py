"""`docker cp`, `docker export`, `docker diff`: a container's files read (or written) safely.

A path inside a container must resolve the way the container's own processes
see it (absolute symlinks, `..` at the root, volumes mounted over the image),
and nothing the container controls may steer host-privileged code outside that
root or run in it. So the engine never touches the files itself: it says which
container and how to enter it (a `Confinement`), and a confined helper
(runtime/confined.py) runs the operation (runtime/containerfs.py) as a process
of that container:

- running: joined to its cgroups and namespaces, like an exec;
- stopped or never started: over its overlay in namespaces of its own. Reads
  mount it read-only from the layers alone (the container's upper dir as the
  top lower layer, so the kernel applies whiteouts and opaque dirs); writes
  mount it with the upper and work dirs, under the container's lock so that a
  start cannot race them.

Export and diff look at the container's filesystem alone, as Docker does
(neither its volumes nor /proc or /dev): running or not, the helper mounts the
overlay read-only in namespaces of its own, the merged view for export, the
upper dir, image and merged view side by side for diff.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any, BinaryIO

from coracle.engine import security_options
from coracle.engine.container import Container
from coracle.errors import Conflict
from coracle.runtime import confined, seccomp
from coracle.runtime.confined import BindMount, Confinement, Helper, Overlay

_OPERATIONS = "coracle.runtime.containerfs"


def stat(engine: Any, ref: str, path: str) -> dict[str, Any]:
    """Docker's PathStat of `path` in the container (HEAD /containers/{id}/archive)."""
    c = engine.container(ref)
    answer = confined.run(confinement(engine, c, writable=False), f"{_OPERATIONS}:path_stat",
                          {"path": path, "ref": ref})
    found: dict[str, Any] = answer["stat"]
    return found


def export(engine: Any, ref: str, path: str) -> tuple[dict[str, Any], Helper]:
    """PathStat and a helper whose stdout carries the tar of `path` (GET .../archive).

    The caller reads `helper.stdout` to its end, then closes the helper."""
    c = engine.container(ref)
    helper = confined.start(confinement(engine, c, writable=False), f"{_OPERATIONS}:archive",
                            {"path": path, "ref": ref})
    engine.announce(c, "archive-path")
    return helper.answer["stat"], helper


def extract(engine: Any, ref: str, path: str, tar: BinaryIO, *, no_overwrite_dir_non_dir: bool = False,
            copy_uid_gid: bool = False) -> None:
    """Unpack `tar` into the directory `path` of the container (PUT .../archive)."""
    c = engine.container(ref)
    with engine._lock_for(c.id):  # a stopped container's overlay is ours until the helper is done
        c = engine.container(c.id)
        args = {"path": path, "ref": ref, "no_overwrite_dir_non_dir": no_overwrite_dir_non_dir,
                "owner": (c.config.get("User") or "0") if copy_uid_gid else None}
        confined.run(confinement(engine, c, writable=True), f"{_OPERATIONS}:extract", args, stdin=tar)
    engine.announce(c, "extract-to-dir")


def export_filesystem(engine: Any, ref: str) -> Helper:
    """A helper whose stdout carries the tar of the container's whole filesystem
    (GET /containers/{id}/export); the caller reads it to its end, then closes it."""
    c = engine.container(ref)
    helper = confined.start(confinement(engine, c, writable=False, view="merged"),
                            f"{_OPERATIONS}:export_filesystem", {})
    engine.announce(c, "export")
    return helper


def changes(engine: Any, ref: str) -> list[dict[str, Any]]:
    """Docker's list of {"Path", "Kind"} the container changed (GET /containers/{id}/changes)."""
    c = engine.container(ref)
    helper = confined.start(confinement(engine, c, writable=False, view="layers"), f"{_OPERATIONS}:changes", {})
    try:
        found: list[dict[str, Any]] = json.loads(helper.stdout.read() or b"[]")
    finally:
        helper.close()
    return found


def copy_up(engine: Any, c: Container) -> None:
    """Fill each new, empty volume of a container about to start with the image's content at
    its destination (Docker's copy-up), unless the mount says `nocopy`.

    Called under the container's lock before its start: the helper mounts the
    overlay (without the container's volumes, so the image's directory shows)
    and copies into the volume it holds open."""
    for m in c.mounts:
        if not m.copies_up:
            continue
        if engine.volumes.get(m.name).mounted_kind or os.listdir(m.source):
            continue
        found = confinement(engine, replace(c, mounts=[]), writable=True)
        confined.run(found, f"{_OPERATIONS}:copy_up", {"path": m.destination}, hold=[m.source])


def confinement(engine: Any, c: Container, writable: bool, view: str | None = None) -> Confinement:
    """How a helper enters this container: as an exec when it runs, over its overlay when not.
    With a `view` ("merged" or "layers"), over its overlay without its mounts, running or not."""
    hc = c.host_config.raw
    found = Confinement(writable)
    profile = security_options.seccomp_of(hc)
    if profile is not None:  # compiled here, once per profile, for the helper's few capabilities
        found.seccomp_bpf = seccomp.compile_bpf(profile, found.capabilities, True)
    if c.state.running and view is None:
        found.pid, found.start_ticks = c.state.pid, c.private.start_ticks
        found.cgroup_dirs = _joinable(engine.cgroup(c).dirs(), c)
        return found
    found.overlay = Overlay(
        lower=engine.images.layer_dirs(engine.images.resolve(c.image_id)), upper=c.layers.upper,
        work=c.layers.work, mountpoint=c.layers.merged, readonly_rootfs=bool(hc.get("ReadonlyRootfs")),
        mounts=[] if view else [BindMount(m.source, m.destination, m.rw) for m in c.mounts
                                if m.type in ("bind", "volume")],
        view=view or "merged")
    remap = security_options.user_namespace(hc, engine.userns_remap)
    if remap is not None:
        found.uid_map, found.gid_map = remap.uid_map, remap.gid_map
    return found


def _joinable(dirs: list[str], c: Container) -> list[str]:
    """The cgroup directories the helper joins. A paused container's freezer would freeze
    the helper too: on cgroup v1 the freezer hierarchy is left out (devices and pids still
    apply); on v2 freezing belongs to the one cgroup, so copying waits for an unpause."""
    if not c.state.paused:
        return dirs
    kept = [d for d in dirs if not os.path.exists(os.path.join(d, "freezer.state"))]
    if any(os.path.exists(os.path.join(d, "cgroup.freeze")) for d in kept):
        raise Conflict(f"Container {c.id} is paused, unpause the container before copying files")
    return kept
