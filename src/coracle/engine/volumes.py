"""Volumes: named directories under <data-root>/volumes/<name>/_data, kept as records.

A volume is its own object (Docker's `/volumes` API): created explicitly or by
a container that names it (`-v name:/dst`, `--mount type=volume`), anonymous
when a container asks for one without a name (`-v /dst`). Anonymous volumes
carry Docker's `com.docker.volume.anonymous` label, which is what `rm -v` and
the default `volume prune` go by.

Only the `local` driver exists. Its options `type`/`device`/`o` make a volume
a mount (tmpfs, or a bind of a host directory) instead of a plain directory:
that mount is made once on the host at the volume's mountpoint when the first
container using it starts and undone when the last one stops, so every
container using the volume sees the same filesystem. The count is never kept
in memory: it is the number of running containers whose records name the
volume, so a daemon that crashed reconciles by the same rule (`reconcile`).
"""

from __future__ import annotations

import builtins
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterable, Iterator

from coracle.clock import timestamp as utc_now
from coracle.disk import usage
from coracle.engine.container import Container, MountPoint
from coracle.events import EventBus
from coracle.errors import Conflict, InvalidParameter, NotFound
from coracle.runtime import syscalls
from coracle.runtime.fdtree import remove_tree
from coracle.runtime.mountpoint import tmpfs_options
from coracle.runtime.rootfs import propagation_of
from coracle.store import Store

KIND = "volume"
ANONYMOUS = "com.docker.volume.anonymous"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
OPTION_KEYS = {"type", "device", "o"}
MNT_DETACH = 2

Records = Callable[[], Iterable[Container]]  # the containers' records, for references


@dataclass
class Volume:
    """One volume's record as the store keeps it."""

    name: str
    created_at: str
    driver: str = "local"
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)

    @property
    def anonymous(self) -> bool:
        return ANONYMOUS in self.labels

    @property
    def mounted_kind(self) -> bool:
        """A volume whose options make it a mount (tmpfs, bind) rather than a plain directory."""
        return bool(self.options.get("type") or self.options.get("device"))

    def to_doc(self) -> dict[str, Any]:
        return {"Name": self.name, "CreatedAt": self.created_at, "Driver": self.driver, "Labels": self.labels,
                "Options": self.options}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Volume:
        return cls(name=doc["Name"], created_at=doc["CreatedAt"], driver=doc.get("Driver") or "local",
                   labels=dict(doc.get("Labels") or {}), options=dict(doc.get("Options") or {}))


def check_doc(doc: dict[str, Any]) -> None:
    """The store's validator: a record that fails is quarantined, not served."""
    if not isinstance(doc.get("Name"), str) or not NAME_RE.match(doc["Name"]):
        raise ValueError("Name is missing or not a volume name")
    for key in ("Labels", "Options"):
        if not isinstance(doc.get(key) or {}, dict):
            raise ValueError(f"{key} is not an object")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidParameter(f'create {name}: "{name}" includes invalid characters for a local volume name, only '
                               '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
                               'use absolute path')
    return name


def check_options(name: str, options: dict[str, str]) -> None:
    """The local driver's options, refused as Docker refuses them."""
    for key in options:
        if key not in OPTION_KEYS:
            raise InvalidParameter(f'create {name}: invalid option key: "{key}"')
    if not options:
        return
    if not options.get("device"):
        raise InvalidParameter(f'create {name}: missing required option: "device"')
    kind = options.get("type") or ""
    flags = [o for o in (options.get("o") or "").split(",") if o]
    if kind == "tmpfs":
        try:
            tmpfs_options(",".join(flags))
        except ValueError as exc:
            raise InvalidParameter(f"create {name}: invalid tmpfs options: {exc}") from None
    elif kind in ("", "none") and "bind" in flags:
        if not options["device"].startswith("/"):
            raise InvalidParameter(f"create {name}: bind device must be an absolute path: {options['device']}")
    else:
        raise InvalidParameter(f"create {name}: volume type {kind!r} is not supported (tmpfs, or none with o=bind)")


def check_driver(driver: str) -> None:
    """Only the local driver exists here: any other is refused as Docker refuses a missing plugin."""
    if (driver or "local") != "local":
        raise NotFound(f'error looking up volume plugin {driver}: plugin "{driver}" not found')


class Volumes:
    """The volume records, their directories and their host mounts."""

    def __init__(self, store: Store, root: str, events: EventBus, records: Records) -> None:
        self.store, self.root, self.events, self._records = store, root, events, records
        self._lock = threading.RLock()
        os.makedirs(root, exist_ok=True)
        store.validate(KIND, check_doc)

    def mountpoint(self, name: str) -> str:
        return os.path.join(self.root, name, "_data")

    # ----- records -----------------------------------------------------------

    def get(self, name: str) -> Volume:
        doc = self.store.get(KIND, name) if name else None
        if doc is None:
            raise NotFound(f"get {name}: no such volume")
        return Volume.from_doc(doc)

    def all(self) -> builtins.list[Volume]:
        return [Volume.from_doc(d) for d in self.store.all(KIND)]

    def create(self, name: str = "", driver: str = "local", options: dict[str, str] | None = None,
               labels: dict[str, str] | None = None) -> Volume:
        """POST /volumes/create: an existing name is returned as it is, as Docker does."""
        anonymous = not name
        name = check_name(name or os.urandom(32).hex())
        options = {k: str(v) for k, v in (options or {}).items()}
        check_driver(driver)
        check_options(name, options)
        with self._lock:
            doc = self.store.get(KIND, name)
            if doc is not None:
                return Volume.from_doc(doc)
            vol = Volume(name=name, created_at=utc_now(), labels={**(labels or {}),
                                                                   **({ANONYMOUS: ""} if anonymous else {})},
                         options=options)
            os.makedirs(self.mountpoint(name), exist_ok=True)
            self.store.put(KIND, name, vol.to_doc())
        self.events.publish("volume", "create", name, {"driver": vol.driver})
        return vol

    def ensure(self, name: str, anonymous: bool, driver: str = "local", options: dict[str, str] | None = None,
               labels: dict[str, str] | None = None) -> Volume:
        """The volume a container names, created with the driver, options and labels its mount asks
        for if it does not exist yet (an existing one is used as it is, as Docker does)."""
        with self._lock:
            doc = self.store.get(KIND, name)
            if doc is not None:
                return Volume.from_doc(doc)
            vol = self.create(name, driver, options, labels)
            if anonymous:
                vol.labels[ANONYMOUS] = ""
                self.store.put(KIND, name, vol.to_doc())
            return vol

    def users(self, name: str, running_only: bool = False) -> builtins.list[str]:
        """Ids of the containers whose mounts name the volume."""
        return [c.id for c in self._records()
                if (not running_only or c.state.running)
                and any(m.is_volume and m.name == name for m in c.mounts)]

    def remove(self, name: str, force: bool = False) -> None:
        """DELETE /volumes/{name}. As in moby, `force` forgives a missing volume, never one in use."""
        with self._lock:
            try:
                vol = self.get(name)
            except NotFound:
                if force:
                    return
                raise
            refs = self.users(name)
            if refs:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(refs)}]")
            self._unmount(vol)
            remove_tree(os.path.join(self.root, name), ignore_errors=True)
            self.store.delete(KIND, name)
        self.events.publish("volume", "destroy", name, {"driver": vol.driver})

    def remove_anonymous(self, names: Iterable[str]) -> None:
        """`rm -v`: the container's anonymous volumes that no other container uses."""
        for name in names:
            try:
                if self.get(name).anonymous:
                    self.remove(name)
            except (NotFound, Conflict):
                pass

    # ----- views -------------------------------------------------------------

    def inspect(self, vol: Volume, with_usage: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"CreatedAt": vol.created_at, "Driver": vol.driver, "Labels": vol.labels or None,
                               "Mountpoint": self.mountpoint(vol.name), "Name": vol.name,
                               "Options": vol.options or None, "Scope": "local"}
        if with_usage:
            out["UsageData"] = {"Size": usage(self.mountpoint(vol.name)), "RefCount": len(self.users(vol.name))}
        return out

    def list(self, filters: dict[str, builtins.list[str]]) -> dict[str, Any]:
        from coracle.api.filters import labels_match

        unknown = set(filters) - {"name", "label", "driver", "dangling"}
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        dangling = [_bool(v, "dangling") for v in filters.get("dangling", [])]
        used = {m.name for c in self._records() for m in c.mounts if m.is_volume}
        out = []
        for vol in self.all():
            if filters.get("name") and not any(n in vol.name for n in filters["name"]):
                continue
            if filters.get("driver") and vol.driver not in filters["driver"]:
                continue
            if not labels_match(vol.labels, filters.get("label", [])):
                continue
            if dangling and dangling[0] == (vol.name in used):
                continue
            out.append(self.inspect(vol))
        return {"Volumes": out, "Warnings": []}

    def prune(self, filters: dict[str, builtins.list[str]]) -> dict[str, Any]:
        """Unused volumes: anonymous ones only unless `all=true` (API 1.42 and later)."""
        from coracle.api.filters import labels_match

        unknown = set(filters) - {"label", "label!", "all"}
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        every = any(_bool(v, "all") for v in filters.get("all", []))
        deleted, reclaimed = [], 0
        for vol in self.all():
            if not every and not vol.anonymous:
                continue
            if not labels_match(vol.labels, filters.get("label", [])):
                continue
            if any(labels_match(vol.labels, [item]) for item in filters.get("label!", [])):
                continue
            size = usage(self.mountpoint(vol.name))
            try:
                self.remove(vol.name)
            except (Conflict, NotFound):
                continue
            deleted.append(vol.name)
            reclaimed += size
        return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}

    # ----- mounts of the local driver's options ----------------------------------

    def attach(self, cid: str, mounts: builtins.list[MountPoint]) -> None:
        """A container starts: mount its tmpfs/bind volumes on the host if nobody else holds them."""
        for m, vol in self._of(mounts):
            if vol.mounted_kind:
                with self._lock:
                    if not _mounted(self.mountpoint(vol.name)):
                        self._mount(vol)
            self.events.publish("volume", "mount", vol.name, {
                "container": cid, "destination": m.destination, "driver": vol.driver,
                "propagation": m.propagation, "read/write": str(m.rw).lower()})

    def detach(self, cid: str, mounts: builtins.list[MountPoint]) -> None:
        """A container stopped (its record already says so): the last user unmounts."""
        for _, vol in self._of(mounts):
            if vol.mounted_kind:
                with self._lock:
                    if not self.users(vol.name, running_only=True):
                        self._unmount(vol)
            self.events.publish("volume", "unmount", vol.name, {"container": cid, "driver": vol.driver})

    def _of(self, mounts: builtins.list[MountPoint]) -> Iterator[tuple[MountPoint, Volume]]:
        """A container's volume mounts with their volumes (one removed meanwhile is skipped)."""
        for m in mounts:
            if m.is_volume:
                try:
                    yield m, self.get(m.name)
                except NotFound:
                    continue

    def reconcile(self) -> builtins.list[str]:
        """At daemon start: unmount the tmpfs/bind volumes no running container uses (a crash left them)."""
        undone = []
        for vol in self.all():
            if vol.mounted_kind and not self.users(vol.name, running_only=True) \
                    and _mounted(self.mountpoint(vol.name)):
                self._unmount(vol)
                undone.append(vol.name)
        return undone

    def _mount(self, vol: Volume) -> None:
        target = self.mountpoint(vol.name)
        os.makedirs(target, exist_ok=True)
        try:
            if vol.options.get("type") == "tmpfs":
                flags, data = tmpfs_options(vol.options.get("o") or "")
                syscalls.mount("tmpfs", target, "tmpfs", flags, data or None)
            else:
                syscalls.mount(vol.options["device"], target, None, syscalls.MS_BIND | syscalls.MS_REC)
        except OSError as exc:
            raise InvalidParameter(f"error while mounting volume '{target}': {exc}") from None

    def _unmount(self, vol: Volume) -> None:
        target = self.mountpoint(vol.name)
        if vol.mounted_kind and _mounted(target):
            syscalls.umount2(target, MNT_DETACH)


def _mounted(path: str) -> bool:
    """A mount point in this mount namespace (os.path.ismount misses a bind within one filesystem)."""
    return propagation_of(path)[0] == os.path.realpath(path)


def _bool(value: str, key: str) -> bool:
    if value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise InvalidParameter(f"invalid filter '{key}={value}'")
