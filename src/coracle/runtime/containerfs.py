"""Operations on a container's files; each runs inside a confined helper (runtime/confined.py).

`docker cp` both ways: the stat of a path, a path streamed out as tar, a tar
unpacked into a directory; `docker export` (the whole filesystem as tar) and
`docker diff` (the container's layer compared with its image). Paths are
resolved by the kernel relative to the container's root (openat2 with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), never
by joining strings; every entry is then read or written relative to its
parent's descriptor (O_NOFOLLOW, O_EXCL, mkdirat, symlinkat, mknodat,
fchownat), so a symlink or a /proc magic link that the container planted, or
swaps in while the copy runs, cannot redirect a read or a write. tarfile only
parses and produces the stream. Owners are numeric: no user database (NSS
module) of the container is ever loaded.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat as st
import tarfile
import time
from typing import Any

from coracle.runtime import syscalls as sc
from coracle.runtime.confined import Channel, Refused
from coracle.runtime.fdtree import Entry, TarWriter, open_dir, tarinfo, walk

_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown
_TIME_MAX = 9_000_000_000  # seconds either side of 1970 that fit the kernel's nanosecond times
_PASSWD_MAX = 16 << 20
# Go's os.FileMode type bits: the CLI reads PathStat.Mode with Go's IsDir() and friends.
_GO_MODE = [(st.S_ISDIR, 1 << 31), (st.S_ISLNK, 1 << 27), (st.S_ISBLK, 1 << 26), (st.S_ISFIFO, 1 << 25),
            (st.S_ISSOCK, 1 << 24), (st.S_ISCHR, (1 << 26) | (1 << 21))]


class _Root:
    """The container's root directory (or another directory treated as a root, `fd`);
    paths are resolved inside it by the kernel."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if fd is None else fd

    def open(self, path: str, flags: int = os.O_PATH) -> int:
        return sc.openat2(self.fd, path, flags, _RESOLVE)


class _Target:
    """A cp path found: the entry `name` in directory `parent` (None: the root itself)."""

    def __init__(self, root: _Root, path: str, ref: str) -> None:
        if not path:
            raise Refused(400, "path cannot be empty")
        clean = posixpath.normpath("/" + path.lstrip("/"))
        self.name = posixpath.basename(path.rstrip("/")) or "/"
        # Docker's rules: a trailing "/." means the contents, a trailing "/" follows the last symlink.
        self.follow = path.endswith("/.") or path.endswith("/") or clean == "/"
        self.arcname = "." if path.endswith("/.") or clean == "/" else posixpath.basename(clean)
        try:
            if self.follow:
                self.fd = root.open(clean + "/" if clean != "/" else clean)
                self.parent, self.entry = None, ""
                self.stat = os.fstat(self.fd)
            else:
                self.fd = root.open(posixpath.dirname(clean), os.O_PATH | os.O_DIRECTORY)
                self.parent, self.entry = self.fd, posixpath.basename(clean)
                self.stat = os.stat(self.entry, dir_fd=self.parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise Refused(404, f"Could not find the file {path} in container {ref}") from None
        self.clean = clean

    def path_stat(self) -> dict[str, Any]:
        """Docker's PathStat (the X-Docker-Container-Path-Stat header)."""
        info = self.stat
        link = os.path.realpath(self.clean) if st.S_ISLNK(info.st_mode) else ""  # a name only: nothing is opened
        ns = info.st_mtime_ns
        mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"
        return {"name": self.name, "size": info.st_size, "mode": _go_mode(info.st_mode), "mtime": mtime,
                "linkTarget": link}

    def directory(self) -> int:
        """An open descriptor of the target directory, for walking it."""
        if self.parent is None:
            return os.open(".", _DIR, dir_fd=self.fd)
        return open_dir(self.parent, self.entry, self.stat)


def _go_mode(mode: int) -> int:
    out = st.S_IMODE(mode) & 0o777
    for test, bit in _GO_MODE:
        if test(mode):
            out |= bit
    for flag, bit in ((st.S_ISUID, 1 << 23), (st.S_ISGID, 1 << 22), (st.S_ISVTX, 1 << 20)):
        if mode & flag:
            out |= bit
    return out


def path_stat(args: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """HEAD /containers/{id}/archive."""
    return {"stat": _Target(_Root(), args["path"], args["ref"]).path_stat()}


def archive(args: dict[str, Any], channel: Channel) -> None:
    """GET /containers/{id}/archive: the PathStat answer, then the tar of the path."""
    target = _Target(_Root(), args["path"], args["ref"])
    channel.answer({"stat": target.path_stat()})
    with tarfile.open(fileobj=channel.output, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        writer = TarWriter(tar)
        if target.parent is None:
            header = tarinfo(target.arcname, target.stat)
            if header is not None:
                tar.addfile(header)
        else:
            writer.add(target.arcname, target.parent, target.entry, target.stat)
        if st.S_ISDIR(target.stat.st_mode):
            top = target.directory()
            try:
                for e in walk(top, target.arcname):
                    writer.add(e.path, e.parent, e.name, e.stat)
            finally:
                os.close(top)


def extract(args: dict[str, Any], channel: Channel) -> None:
    """PUT /containers/{id}/archive: unpack the tar on stdin into the directory `path`."""
    root = _Root()
    path, ref = args["path"], args["ref"]
    dest_path = posixpath.normpath("/" + path.lstrip("/"))
    try:
        dest = root.open(dest_path)
    except (FileNotFoundError, NotADirectoryError):
        raise Refused(404, f"Could not find the file {path} in container {ref}") from None
    if not st.S_ISDIR(os.fstat(dest).st_mode):
        raise Refused(400, "extraction point is not a directory")
    owner = _owner(root, args["owner"]) if args.get("owner") else None
    unpacker = _Unpacker(root, dest, dest_path, bool(args.get("no_overwrite_dir_non_dir")), owner)
    try:
        with tarfile.open(fileobj=channel.input, mode="r|") as tar:
            for member in tar:
                unpacker.add(tar, member)
    except (tarfile.TarError, EOFError, UnicodeError) as exc:
        raise Refused(400, f"invalid archive: {exc}") from None
    finally:
        unpacker.close()


def copy_up(args: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """A new volume's first mount: the image's content at `path` copied into the volume.

    The volume's directory was opened on the host before the helper entered the
    container (`held`), so the image side is resolved inside the container's
    root and the volume side inside the volume, both by descriptor. The tree
    goes through an in-memory tar, the same reader and writer as `docker cp`."""
    dest = args["held"][0]
    try:
        src = _Root().open(args["path"], os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return {"copied": False}
    try:
        if os.listdir(dest):
            return {"copied": False}  # not a new volume any more
        top = os.fstat(src)
        buffer = os.fdopen(os.memfd_create("copy-up", os.MFD_CLOEXEC), "w+b")
        with buffer:
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                writer = TarWriter(tar)
                for e in walk(src):
                    writer.add(e.path, e.parent, e.name, e.stat)
            buffer.seek(0)
            unpacker = _Unpacker(_Root(dest), dest, "/", False, None)
            try:
                with tarfile.open(fileobj=buffer, mode="r") as tar:
                    for member in tar:
                        unpacker.add(tar, member)
            finally:
                unpacker.close()
        os.fchown(dest, top.st_uid, top.st_gid)
        os.fchmod(dest, st.S_IMODE(top.st_mode))
    finally:
        os.close(src)
    return {"copied": True}


def _owner(root: _Root, spec: str) -> tuple[int, int]:
    """uid/gid of a container user ("name", "uid", "uid:gid", "name:group") from its own files."""
    user, _, group = spec.partition(":")

    def lookup(file: str, name: str) -> tuple[int, int] | None:
        try:
            fd = root.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not st.S_ISREG(os.fstat(fd).st_mode):
                return None
            text = f.read(_PASSWD_MAX).decode("utf-8", "replace")
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == name and _numeric(fields[2]) and _numeric(fields[3]):
                return int(fields[2]), int(fields[3])
        return None

    if _numeric(user):
        uid, gid = int(user), int(user)
    else:
        found = lookup("/etc/passwd", user)
        if found is None:
            raise Refused(400, f"unable to find user {user}: no matching entries in passwd file")
        uid, gid = found
    if group:
        if _numeric(group):
            gid = int(group)
        else:
            found = lookup("/etc/group", group)
            if found is None:
                raise Refused(400, f"unable to find group {group}: no matching entries in group file")
            gid = found[0]
    if not (0 <= uid <= _ID_MAX and 0 <= gid <= _ID_MAX):
        raise Refused(400, f"invalid user {spec!r} of the container: uid/gid {uid}:{gid} is out of range")
    return uid, gid


def _numeric(text: str) -> bool:
    return text.isascii() and text.isdigit()


class _Unpacker:
    """Writes tar members below the destination, each relative to its parent's descriptor.

    The directories from the destination down to the current member's parent
    stay open (tar members come depth first, so consecutive members share
    them); a missing one is made with mkdirat, a symlink found on the way is
    followed the way the container would follow it, inside its root."""

    def __init__(self, root: _Root, dest: int, dest_path: str, strict: bool, owner: tuple[int, int] | None) -> None:
        self.root, self.dest, self.dest_path = root, dest, dest_path
        self.strict, self.owner = strict, owner
        self.chain: list[tuple[str, int]] = []

    def close(self) -> None:
        for _, fd in self.chain:
            os.close(fd)
        self.chain = []

    def _parent(self, parts: list[str]) -> int:
        keep = 0
        while keep < min(len(parts), len(self.chain)) and self.chain[keep][0] == parts[keep]:
            keep += 1
        for _, fd in self.chain[keep:]:
            os.close(fd)
        del self.chain[keep:]
        fd = self.chain[-1][1] if self.chain else self.dest
        for i in range(keep, len(parts)):
            fd = self._step(fd, parts[: i + 1])
            self.chain.append((parts[i], fd))
        return fd

    def _step(self, parent: int, parts: list[str]) -> int:
        name = parts[-1]
        try:
            return os.open(name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(name, 0o755, dir_fd=parent)
            return os.open(name, _DIR, dir_fd=parent)
        except OSError as exc:
            if not st.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise exc from None
        return self.root.open(posixpath.join(self.dest_path, *parts), os.O_RDONLY | os.O_DIRECTORY)

    def add(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = [p for p in m.name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise Refused(400, f"invalid tar entry {m.name!r}: it leaves the extraction point")
        if not parts:
            if m.isdir():
                return  # the destination itself
            raise Refused(400, f"invalid tar entry {m.name!r}")
        uid, gid = self.owner or (m.uid, m.gid)
        if not (0 <= uid <= _ID_MAX and 0 <= gid <= _ID_MAX):
            raise Refused(400, f"invalid archive: {m.name!r} has owner {uid}:{gid}, out of range")
        if not -_TIME_MAX < m.mtime < _TIME_MAX:
            raise Refused(400, f"invalid archive: {m.name!r} has modification time {m.mtime}, out of range")
        parent, name = self._parent(parts[:-1]), parts[-1]
        if self._clear(parent, name, m):
            return
        mode, times = m.mode & 0o7777, (int(m.mtime * 10**9),) * 2
        if m.isreg():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(m)
                if source is not None:
                    shutil.copyfileobj(source, out, 1 << 20)
                    out.flush()
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)  # after chown, which clears setuid bits
                os.utime(fd, ns=times)
            return
        if m.isdir():
            os.mkdir(name, 0o700, dir_fd=parent)
            self._directory_attrs(parent, name, uid, gid, mode, times)
            return
        if m.islnk():
            self._hard_link(parent, name, m.linkname)
            return
        if m.issym():
            os.symlink(m.linkname, name, dir_fd=parent)
        elif m.ischr() or m.isblk():
            kind = st.S_IFCHR if m.ischr() else st.S_IFBLK
            os.mknod(name, kind | mode, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
        elif m.isfifo():
            os.mkfifo(name, mode, dir_fd=parent)
        else:
            return  # nothing a directory can hold
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=times, dir_fd=parent, follow_symlinks=False)

    def _clear(self, parent: int, name: str, m: tarfile.TarInfo) -> bool:
        """Make room for the member; True when it is a directory over an existing one (updated)."""
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        is_dir = st.S_ISDIR(existing.st_mode)
        if self.strict and is_dir != m.isdir():
            what = ("directory", "non-directory") if is_dir else ("non-directory", "directory")
            raise Refused(400, f"cannot overwrite {what[0]} {name!r} with {what[1]} {m.name!r}")
        if is_dir and m.isdir():
            uid, gid = self.owner or (m.uid, m.gid)
            self._directory_attrs(parent, name, uid, gid, m.mode & 0o7777, (int(m.mtime * 10**9),) * 2)
            return True
        if is_dir:
            shutil.rmtree(name, dir_fd=parent)  # by descriptors, never following a symlink
        else:
            os.unlink(name, dir_fd=parent)  # never write through what the container left there
        return False

    @staticmethod
    def _directory_attrs(parent: int, name: str, uid: int, gid: int, mode: int, times: tuple[int, int]) -> None:
        fd = open_dir(parent, name)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.utime(fd, ns=times)
        finally:
            os.close(fd)

    def _hard_link(self, parent: int, name: str, linkname: str) -> None:
        parts = [p for p in linkname.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise Refused(400, f"invalid tar entry {name!r}: its link {linkname!r} leaves the extraction point")
        source = self.root.open(posixpath.join(self.dest_path, *parts[:-1]), os.O_PATH | os.O_DIRECTORY)
        try:
            os.link(parts[-1], name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source)


def export_filesystem(args: dict[str, Any], channel: Channel) -> None:
    """GET /containers/{id}/export: the tar of the whole root (image and container layer
    merged, without the container's mounts), paths relative as Docker writes them."""
    channel.answer({})
    top = os.open("/", _DIR)
    try:
        with tarfile.open(fileobj=channel.output, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            writer = TarWriter(tar)
            for e in walk(top):
                writer.add(e.path, e.parent, e.name, e.stat)
    finally:
        os.close(top)


# Docker's change kinds (GET /containers/{id}/changes)
MODIFIED, ADDED, DELETED = 0, 1, 2
# Mount points the runtime makes in the container's layer. Docker keeps them in an "init"
# layer below the container's, so they are never changes: neither are they here.
RUNTIME_PATHS = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/etc/mtab", "/.dockerenv",
                           "/proc", "/sys", "/dev", "/dev/console", "/dev/pts", "/dev/shm"})
_NO_LINKS = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_SYMLINKS


def changes(args: dict[str, Any], channel: Channel) -> None:
    """GET /containers/{id}/changes, in the "layers" view (/upper, /lower, /merged).

    Docker's overlay rules and order: the upper dir is walked depth first in
    name order; a whiteout (0/0 character device) is a deletion, an entry the
    image lacks an addition, anything else a modification, except a directory
    whose size, mode and mtime are the image's; the parent of an addition or
    deletion is reported modified first. The image's entries that an opaque
    directory hides (absent from the merged view) are deletions too. Answers,
    then writes the JSON list of {"Path", "Kind"} as data."""
    upper, lower, merged = (os.open(f"/{name}", _DIR) for name in ("upper", "lower", "merged"))
    found: list[dict[str, Any]] = []
    changed_dirs: set[str] = set()

    def record(path: str, kind: int) -> None:
        parent = posixpath.dirname(path)
        if kind != MODIFIED and parent != "/" and parent not in changed_dirs:
            found.append({"Path": parent, "Kind": MODIFIED})
            changed_dirs.add(parent)
        found.append({"Path": path, "Kind": kind})

    try:
        for e in walk(upper):
            path, info = "/" + e.path, e.stat
            is_dir = st.S_ISDIR(info.st_mode)
            if path in RUNTIME_PATHS:
                continue
            if st.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                record(path, DELETED)
                continue
            image = _lstat_below(lower, e.path)
            both_dirs = is_dir and image is not None and st.S_ISDIR(image.st_mode)
            if not (both_dirs and image is not None and _same_directory(e, image)):
                if is_dir:
                    changed_dirs.add(path)
                record(path, ADDED if image is None else MODIFIED)
            if both_dirs:
                for name in _hidden(e, lower, merged):
                    record(posixpath.join(path, name), DELETED)
    finally:
        for fd in (upper, lower, merged):
            os.close(fd)
    channel.answer({})
    channel.output.write(json.dumps(found).encode())


def _lstat_below(top: int, path: str) -> os.stat_result | None:
    """The entry at `path` in the tree `top` without following any symlink, or None."""
    try:
        parent = sc.openat2(top, posixpath.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY, _NO_LINKS)
    except OSError:
        return None
    try:
        return os.stat(posixpath.basename(path), dir_fd=parent, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(parent)


def _same_directory(e: Entry, b: os.stat_result) -> bool:
    """Docker's test for a directory copied up but not changed: size, mode and mtime (whole
    seconds when either side lost its nanoseconds); or only the runtime's mount points in it."""
    a = e.stat
    if a.st_mode == b.st_mode and _only_runtime_paths(e):
        return True
    same_time = a.st_mtime_ns == b.st_mtime_ns or (
        a.st_mtime_ns // 10**9 == b.st_mtime_ns // 10**9 and 0 in (a.st_mtime_ns % 10**9, b.st_mtime_ns % 10**9))
    return a.st_size == b.st_size and a.st_mode == b.st_mode and same_time


def _only_runtime_paths(e: Entry) -> bool:
    names = _listing(e)
    return bool(names) and all(posixpath.join("/" + e.path, name) in RUNTIME_PATHS for name in names)


def _listing(e: Entry) -> set[str]:
    """The names in the directory entry `e` of the walk (opened by descriptor, as listed)."""
    own = open_dir(e.parent, e.name, e.stat)
    try:
        return set(os.listdir(own))
    finally:
        os.close(own)


def _hidden(e: Entry, lower: int, merged: int) -> list[str]:
    """Names the image has in this directory that the container no longer sees and that
    its own layer does not list (an opaque directory: removed and made again)."""
    names: list[set[str]] = []
    for top in (lower, merged):
        try:
            fd = sc.openat2(top, e.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, _NO_LINKS)
        except OSError:
            return []
        try:
            names.append(set(os.listdir(fd)))
        finally:
            os.close(fd)
    return sorted(names[0] - names[1] - _listing(e))
