"""Building the container's filesystem view inside its own mount namespace.

Everything here runs in the container's first process after it has been
released, in a mount namespace that nobody else shares. The overlay is mounted
there and only there, so a crash can never leave a rootfs mount behind on the
host: the mount dies with the namespace.
"""

from __future__ import annotations

import os
import stat

from coracle.runtime import syscalls as sc
from coracle.runtime.spec import Spec

# Docker's default device nodes: (name, type, major, minor)
DEFAULT_DEVICES = [
    ("null", "c", 1, 3),
    ("zero", "c", 1, 5),
    ("full", "c", 1, 7),
    ("random", "c", 1, 8),
    ("urandom", "c", 1, 9),
    ("tty", "c", 5, 0),
]


def _inside(root: str, path: str) -> str:
    """`path` interpreted inside `root`, refusing symlinks that climb out of it."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = root
    for i, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            rest = "/".join(parts[i + 1:])
            base = root if target.startswith("/") else current
            return _inside(root, os.path.relpath(os.path.join(base, target.lstrip("/")), root) + ("/" + rest if rest else ""))
        current = candidate
    return current


def _ensure(path: str, like_file: bool) -> None:
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if like_file:
        open(path, "a").close()
    else:
        os.makedirs(path, exist_ok=True)


def _mount_dev(root: str, tty: bool, extra: list[dict]) -> None:
    dev = os.path.join(root, "dev")
    os.makedirs(dev, exist_ok=True)
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    old = os.umask(0)
    try:
        for name, kind, major, minor in DEFAULT_DEVICES:
            os.mknod(os.path.join(dev, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        for d in extra:
            mode = (stat.S_IFCHR if d.get("type", "c") == "c" else stat.S_IFBLK) | d.get("mode", 0o660)
            path = os.path.join(root, d["path"].lstrip("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mknod(path, mode, os.makedev(d["major"], d["minor"]))
    finally:
        os.umask(old)
    for sub, fstype, flags, data in (
        ("pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ("shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=1777,size=65536k"),
        ("mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None),
    ):
        target = os.path.join(dev, sub)
        os.makedirs(target, exist_ok=True)
        sc.mount(sub if fstype != "devpts" else "devpts", target, fstype, flags, data)
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    if tty:
        _ensure(os.path.join(dev, "console"), like_file=True)


def _mount_user_mounts(root: str, spec: Spec) -> None:
    for m in spec.mounts:
        target = _inside(root, m.destination)
        if m.type == "tmpfs":
            _ensure(target, like_file=False)
            sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, m.options or None)
            continue
        if not os.path.exists(m.source):
            raise FileNotFoundError(f"bind source path does not exist: {m.source}")
        _ensure(target, like_file=not os.path.isdir(m.source))
        sc.mount(m.source, target, None, sc.MS_BIND | sc.MS_REC)
        if m.readonly:
            sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC)


def _mask_and_protect(root: str, spec: Spec) -> None:
    for path in spec.masked_paths:
        target = os.path.join(root, path.lstrip("/"))
        if not os.path.lexists(target):
            continue
        if os.path.isdir(target):
            sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, None)
        else:
            sc.mount("/dev/null", target, None, sc.MS_BIND)
    for path in spec.readonly_paths:
        target = os.path.join(root, path.lstrip("/"))
        if not os.path.lexists(target):
            continue
        sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC)


def build(spec: Spec) -> None:
    """Mount the overlay, kernel filesystems and user mounts, then pivot into it."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    root = spec.rootfs
    lower = ":".join(reversed(spec.lower))
    sc.mount("overlay", root, "overlay", 0, f"lowerdir={lower},upperdir={spec.upper},workdir={spec.work}")
    proc = os.path.join(root, "proc")
    os.makedirs(proc, exist_ok=True)
    sc.mount("proc", proc, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sys_dir = os.path.join(root, "sys")
    os.makedirs(sys_dir, exist_ok=True)
    sys_flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if spec.privileged else sc.MS_RDONLY)
    try:
        sc.mount("sysfs", sys_dir, "sysfs", sys_flags)
    except PermissionError:
        # sysfs cannot be mounted fresh when the network namespace is not ours
        # (host or container: mode); a read-only recursive bind is what Docker does too.
        sc.mount("/sys", sys_dir, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, sys_dir, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC)
    _mount_dev(root, spec.process.tty, spec.devices)
    _mount_user_mounts(root, spec)
    if spec.init_binary:
        target = os.path.join(root, "sbin/docker-init")
        _ensure(target, like_file=True)
        sc.mount(spec.init_binary, target, None, sc.MS_BIND)
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    _mask_and_protect(root, spec)
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    if spec.readonly_rootfs:
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
