"""Directory trees read by descriptor: each entry is looked at relative to its parent's fd.

A tree that someone else can change while we read it (a container's files, a
running container's overlay upper dir) must never be walked by path: between
two lookups of the same path string a directory can become a symlink, and the
second lookup lands wherever it points. Here every directory is opened once
with O_NOFOLLOW and checked to be the inode that was listed; every entry is
stat'ed, read or opened relative to that descriptor, so a swap made during the
walk is either not seen or refused, and never followed.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat as st
import tarfile
import threading
from dataclasses import dataclass
from typing import BinaryIO
from collections.abc import Callable, Iterator

XATTR_PAX = "SCHILY.xattr."
# What a lookup meets when the entry was removed or swapped since it was listed.
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ESTALE, errno.EINVAL)
_NOFOLLOW_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


@dataclass
class Entry:
    """One entry of a walk: `name` inside the open directory `parent`, `path` relative to the top."""

    path: str
    parent: int
    name: str
    stat: os.stat_result


class Changed(OSError):
    """The entry is no longer what was listed (replaced while we were reading)."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ESTALE, f"{name} changed while it was being read")


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and st.S_IFMT(a.st_mode) == st.S_IFMT(b.st_mode)


def open_dir(parent: int, name: str, seen: os.stat_result | None = None) -> int:
    """The directory `name` of `parent`, never through a symlink; `seen` must still match."""
    fd = os.open(name, _NOFOLLOW_READ | os.O_DIRECTORY, dir_fd=parent)
    if seen is not None and not _same(os.fstat(fd), seen):
        os.close(fd)
        raise Changed(name)
    return fd


def open_regular(parent: int, name: str, seen: os.stat_result) -> BinaryIO:
    """The regular file `name` of `parent` for reading, refusing anything it was swapped for.

    O_NONBLOCK keeps a FIFO put in its place from blocking us; the inode check
    refuses it (or a device node) before a single byte is read."""
    fd = os.open(name, _NOFOLLOW_READ | os.O_NONBLOCK, dir_fd=parent)
    if not _same(os.fstat(fd), seen) or not st.S_ISREG(seen.st_mode):
        os.close(fd)
        raise Changed(name)
    return os.fdopen(fd, "rb")


def walk(top: int, prefix: str = "") -> Iterator[Entry]:
    """Every entry below the open directory `top`, sorted, each directory before its contents.

    Iterative (a very deep tree costs descriptors, never recursion); the caller
    should raise RLIMIT_NOFILE to its hard limit for trees deeper than ~1000.
    An entry's `parent` descriptor is valid until the walk moves on. Entries
    removed or swapped while the walk runs are left out: what is read is
    always what was listed, or nothing."""
    first = os.dup(top)
    stack = [(first, prefix, iter(sorted(os.listdir(first))))]
    try:
        while stack:
            fd, rel, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            path = posixpath.join(rel, name) if rel else name
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                continue
            yield Entry(path, fd, name, info)
            if st.S_ISDIR(info.st_mode):
                try:
                    child = open_dir(fd, name, info)
                except OSError as exc:
                    if exc.errno not in _GONE:
                        raise
                    continue
                stack.append((child, path, iter(sorted(os.listdir(child)))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def tarinfo(arcname: str, info: os.stat_result, linkname: str = "") -> tarfile.TarInfo | None:
    """A tar header for an entry with numeric owners only (no user database is consulted),
    or None for what a tar cannot hold (sockets)."""
    mode = info.st_mode
    ti = tarfile.TarInfo(arcname)
    ti.mode, ti.uid, ti.gid, ti.mtime = st.S_IMODE(mode), info.st_uid, info.st_gid, info.st_mtime
    ti.uname = ti.gname = ""
    if st.S_ISREG(mode):
        ti.size = info.st_size
    elif st.S_ISDIR(mode):
        ti.type = tarfile.DIRTYPE
    elif st.S_ISLNK(mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, linkname
    elif st.S_ISCHR(mode) or st.S_ISBLK(mode):
        ti.type = tarfile.CHRTYPE if st.S_ISCHR(mode) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(info.st_rdev), os.minor(info.st_rdev)
    elif st.S_ISFIFO(mode):
        ti.type = tarfile.FIFOTYPE
    else:
        return None
    return ti


class TarWriter:
    """Adds entries found by descriptor to a tar stream; hard links stay hard links.

    `keep_xattr`, when given, selects the extended attributes of files and
    directories recorded as SCHILY.xattr PAX headers (read through the open
    descriptor, so from the very inode whose data is written)."""

    def __init__(self, tar: tarfile.TarFile, keep_xattr: Callable[[str], bool] | None = None) -> None:
        self.tar, self.keep_xattr = tar, keep_xattr
        self._links: dict[tuple[int, int], str] = {}

    def add(self, arcname: str, parent: int, name: str, info: os.stat_result) -> tarfile.TarInfo | None:
        """Write one entry (its data too, for a regular file); returns its header, None if skipped
        (a socket, or an entry removed or swapped since it was listed)."""
        try:
            return self._add(arcname, parent, name, info)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            return None

    def _add(self, arcname: str, parent: int, name: str, info: os.stat_result) -> tarfile.TarInfo | None:
        link = os.readlink(name, dir_fd=parent) if st.S_ISLNK(info.st_mode) else ""
        ti = tarinfo(arcname, info, link)
        if ti is None:
            return None
        key = (info.st_dev, info.st_ino)
        if ti.isreg() and info.st_nlink > 1:
            if key in self._links:
                ti.type, ti.linkname, ti.size = tarfile.LNKTYPE, self._links[key], 0
                self.tar.addfile(ti)
                return ti
            self._links[key] = arcname
        if ti.isreg():
            with open_regular(parent, name, info) as data:
                self._xattrs(ti, data.fileno())
                self.tar.addfile(ti, data)
        elif ti.isdir() and self.keep_xattr is not None:
            fd = open_dir(parent, name, info)
            try:
                self._xattrs(ti, fd)
            finally:
                os.close(fd)
            self.tar.addfile(ti)
        else:
            self.tar.addfile(ti)
        return ti

    def _xattrs(self, ti: tarfile.TarInfo, fd: int) -> None:
        if self.keep_xattr is None:
            return
        headers = dict(ti.pax_headers)
        for attr in os.listxattr(fd):
            if self.keep_xattr(attr):
                headers[XATTR_PAX + attr] = os.getxattr(fd, attr).decode("utf-8", "surrogateescape")
        ti.pax_headers = headers


def remove_tree(path: str, ignore_errors: bool = False) -> None:
    """shutil.rmtree without recursion (a tree a container or an image made can be deeper
    than Python's recursion limit), by descriptor, never following a symlink."""
    try:
        parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            remove_entry(parent, os.path.basename(path))
        finally:
            os.close(parent)
    except OSError:
        if not ignore_errors:
            raise


class Trash:
    """A directory of trees on their way out: moved in with one rename, removed by a thread.

    Why: removing a container's directory (overlay upper and work dirs, logs,
    record) is a few dozen unlinks, each a journal update on the data root's disk:
    5-20 ms on a busy disk, all inside `rm` and so inside `run --rm`, which waits
    for the removal. A rename takes the tree out of sight at once; what a daemon
    that stopped before emptying the trash left there goes with the next emptying.
    The trash must be on the same filesystem as what it takes (a directory of the
    data root); where it is not, the tree is removed in place.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def discard(self, path: str) -> None:
        """Take the tree at path away now; its removal finishes in the background."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            os.rename(path, os.path.join(self.path, f"{os.path.basename(path)}.{os.urandom(4).hex()}"))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            remove_tree(path, ignore_errors=True)
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._empty, name="trash", daemon=True)
                self._thread.start()
        self._wake.set()

    def _empty(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                names = os.listdir(self.path)
            except OSError:
                continue
            for name in names:
                remove_tree(os.path.join(self.path, name), ignore_errors=True)


def remove_entry(parent: int, name: str) -> None:
    """Remove `name` from the open directory `parent`: a file, a symlink or a whole tree."""
    try:
        top = open_dir(parent, name)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(name, dir_fd=parent)
        return
    stack = [(parent, name, top)]
    while stack:
        fd = stack[-1][2]
        below = None
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    below = entry.name
                    break
                os.unlink(entry.name, dir_fd=fd)
        if below is None:
            up, done, _ = stack.pop()
            os.close(fd)
            os.rmdir(done, dir_fd=up)
        else:
            stack.append((fd, below, open_dir(fd, below)))
