"""User namespaces (`--userns-remap`): root in the container is an unprivileged id on the host.

Daemon side: `Remap.load("default" | "user[:group]")` reads the subordinate
ranges of the remapped identity from /etc/subuid and /etc/subgid and turns
them into uid/gid maps (container id 0 is the first id of the first range).
"default" is a system user `coracle`, created with its ranges if missing, as
Docker does with `dockremap`.

Child side (the monitor's fresh, single-threaded child, still real root):
`enter(spec)` creates the user namespace through a short-lived holder
process, writes its maps from outside (only a process in the parent
namespace may), makes an idmapped clone of every image layer for it (only
real root may: the layers' filesystem belongs to the initial namespace),
then joins it and becomes its root. The namespaces created afterwards are
owned by it, which is what lets the container mount its overlay, proc, sysfs
and devpts while holding no privilege on the host. The layers stay as they
are on disk, shared by every container: an idmapped mount shows host id 0
as the container's root without copying or chowning a single file.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from coracle.errors import InvalidParameter
from coracle.runtime import syscalls as sc

SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
DEFAULT_USER = "coracle"
FIRST_ID, RANGE_SIZE = 100000, 65536

# x86_64 syscall numbers and flags of the new mount API (Python and glibc 2.36- lack wrappers).
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


# ----- daemon side ----------------------------------------------------------


@dataclass(frozen=True)
class Remap:
    """The id maps of remapped containers: rows of [inside, outside, count]."""

    uid_map: list[list[int]]
    gid_map: list[list[int]]

    @property
    def root(self) -> tuple[int, int]:
        """The host uid and gid of the container's root."""
        return self.uid_map[0][1], self.gid_map[0][1]

    @classmethod
    def load(cls, setting: str) -> Remap:
        """From the daemon flag: "default" or "user[:group]" (names or numeric ids)."""
        if setting == "default":
            ensure_default_user()
            user = group = DEFAULT_USER
        else:
            user, _, group = setting.partition(":")
            group = group or user
        user_names = _names(user, pwd.getpwnam, pwd.getpwuid)
        group_names = _names(group, grp.getgrnam, grp.getgrgid)
        return cls(_map(subordinate_ranges(SUBUID, user_names), SUBUID, user),
                   _map(subordinate_ranges(SUBGID, group_names), SUBGID, group))


def _names(ident: str, by_name: Callable[[str], Sequence[Any]], by_id: Callable[[int], Sequence[Any]]) -> set[str]:
    """The name and the number of a user or group: /etc/subuid may list either."""
    try:
        entry = by_id(int(ident)) if ident.isdigit() else by_name(ident)
    except KeyError:
        raise InvalidParameter(f"userns-remap: no such user or group {ident!r}") from None
    return {entry[0], str(entry[2])}


def subordinate_ranges(path: str, names: set[str]) -> list[tuple[int, int]]:
    """(start, count) of every subordinate range of `names` in `path`, in file order."""
    try:
        with open(path) as f:
            rows = [line.strip().split(":") for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []
    return [(int(r[1]), int(r[2])) for r in rows if len(r) == 3 and r[0] in names]


def _map(ranges: list[tuple[int, int]], path: str, who: str) -> list[list[int]]:
    if not ranges:
        raise InvalidParameter(f"userns-remap: no subordinate ids for {who!r} in {path}")
    rows, inside = [], 0
    for start, count in ranges:
        rows.append([inside, start, count])
        inside += count
    return rows


def ensure_default_user() -> None:
    """The `coracle` system user and a free range of 65536 ids in /etc/subuid and /etc/subgid."""
    try:
        pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/false", DEFAULT_USER],
                       check=True, capture_output=True)
    for path in (SUBUID, SUBGID):
        if subordinate_ranges(path, {DEFAULT_USER}):
            continue
        try:
            with open(path) as f:
                taken = [(int(r[1]), int(r[2])) for r in (line.strip().split(":") for line in f) if len(r) == 3]
        except FileNotFoundError:
            taken = []
        start = max([FIRST_ID, *(s + n for s, n in taken)])
        with open(path, "a") as f:
            f.write(f"{DEFAULT_USER}:{start}:{RANGE_SIZE}\n")


# ----- child side -----------------------------------------------------------


def _syscall(number: int, *args: object) -> int:
    libc = sc._libc
    result = libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syscall {number}: {os.strerror(err)}")
    return int(result)


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached copy of the mount tree at `path` whose ids are seen through `userns_fd`."""
    fd = _syscall(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), path.encode(),
                  ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE))
    attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
    try:
        _syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
                 ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, f"cannot idmap image layer {path}: {exc.strerror}") from None
    return fd


def attach(fd: int, target: str) -> None:
    """Mount a detached tree (from `idmapped_clone`) at `target` in the current mount namespace."""
    _syscall(SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD), target.encode(),
             ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))


def _write_maps(pid: int, uid_map: list[list[int]], gid_map: list[list[int]]) -> None:
    for name, rows in (("uid_map", uid_map), ("gid_map", gid_map)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write("".join(f"{a} {b} {c}\n" for a, b, c in rows))


def _create(uid_map: list[list[int]], gid_map: list[list[int]]) -> int:
    """A new, mapped user namespace; returns a descriptor of it.

    A holder child unshares it and waits; we (still in the parent namespace)
    write its maps, keep a handle, and let the holder go."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(hold_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError("cannot create a user namespace")
        _write_maps(pid, uid_map, gid_map)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(hold_w)
        os.waitpid(pid, 0)


def become_root() -> None:
    """Take the namespace's uid/gid 0: files we create must carry a mapped owner."""
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def enter(lower: list[str], owned: list[str], uid_map: list[list[int]], gid_map: list[list[int]]) -> list[int]:
    """Create and join the container's user namespace; return idmapped clones of `lower`.

    `owned` (the overlay's upper and work dirs) are given to the container's
    root first: it creates every file of its writable layer."""
    root_uid, root_gid = uid_map[0][1], gid_map[0][1]
    for path in owned:
        os.chown(path, root_uid, root_gid)
    userns = _create(uid_map, gid_map)
    try:
        layers = [idmapped_clone(path, userns) for path in lower]
        sc.setns(userns, sc.CLONE_NEWUSER)
    finally:
        os.close(userns)
    become_root()
    return layers
