"""Mount points inside a container's root, found and made by descriptor, never by joining strings.

While the root filesystem is built, the process still sees the host's whole
tree (its mount namespace is a copy of the host's). The image chooses its own
symlinks (`/dev -> /tmp/anything`, `/sbin -> /etc`), a request chooses mount
destinations, and a volume shared with a running container can have a
directory swapped for a symlink between two steps. So every path below the
root is resolved by the kernel with the root as its `/` (openat2
RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS: `..` and symlinks, absolute or
relative, stop at the root), missing components are made relative to their
parent's descriptor, and mounts go onto `/proc/self/fd/N` of the descriptor
found, so what is mounted on is exactly what was resolved.
"""

from __future__ import annotations

import errno
import os
import posixpath
from contextlib import contextmanager
from collections.abc import Iterator

from coracle.runtime import syscalls as sc

_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
MAX_LINKS = 40  # the kernel's own limit on symlinks followed in one lookup


def fd_path(fd: int) -> str:
    """A path naming exactly what an open descriptor refers to (for mount, statvfs, open)."""
    return f"/proc/self/fd/{fd}"


class RootDir:
    """The root directory of a container being built (a directory of the host's tree)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def open(self, path: str, flags: int = os.O_PATH) -> int:
        """A descriptor of `path` as the container will see it; FileNotFoundError if absent."""
        return sc.openat2(self.fd, path, flags, _RESOLVE)

    def ensure(self, path: str, like_file: bool, links: int = 0) -> int:
        """An O_PATH descriptor of `path`, made first if missing: parents as directories, the
        last one as a directory or (like_file) an empty file, as a mount point for it. A
        symlink to a missing path gets its target made, inside the root, as the kernel
        would resolve it there."""
        path = posixpath.normpath("/" + path)
        try:
            return self.open(path)
        except FileNotFoundError:
            pass
        if links > MAX_LINKS:
            raise OSError(errno.ELOOP, f"{path}: too many levels of symbolic links")
        parent, name = posixpath.split(path)
        parent_fd = self.ensure(parent, like_file=False, links=links)
        try:
            if like_file:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                                 dir_fd=parent_fd))
            else:
                os.mkdir(name, 0o755, dir_fd=parent_fd)
        except FileExistsError:  # made meanwhile, or a symlink to a missing path
            try:
                target = os.readlink(name, dir_fd=parent_fd)
            except OSError:
                target = ""
            if target:
                os.close(self.ensure(posixpath.join(parent, target), like_file, links + 1))
        finally:
            os.close(parent_fd)
        return self.open(path)

    @contextmanager
    def at(self, path: str) -> Iterator[str]:
        """A path naming what is at `path` now (after a mount there: the new mount's root)."""
        fd = self.open(path)
        try:
            yield fd_path(fd)
        finally:
            os.close(fd)

    def mount(self, path: str, source: str | None, fstype: str | None, flags: int = 0, data: str | None = None,
              like_file: bool = False) -> None:
        """mount(2) on `path` inside the root, making the mount point if it is missing."""
        fd = self.ensure(path, like_file)
        try:
            sc.mount(source, fd_path(fd), fstype, flags, data)
        except OSError as exc:
            raise OSError(exc.errno, f"mount {source or fstype} on {path}: {os.strerror(exc.errno or 0)}") from None
        finally:
            os.close(fd)


# tmpfs option words that are mount flags: word -> (flag, set it?)
_TMPFS_FLAGS = {
    "ro": (sc.MS_RDONLY, True), "rw": (sc.MS_RDONLY, False), "noexec": (sc.MS_NOEXEC, True),
    "exec": (sc.MS_NOEXEC, False), "nosuid": (sc.MS_NOSUID, True), "suid": (sc.MS_NOSUID, False),
    "nodev": (sc.MS_NODEV, True), "dev": (sc.MS_NODEV, False), "noatime": (sc.MS_NOATIME, True),
    "atime": (sc.MS_NOATIME, False), "strictatime": (sc.MS_STRICTATIME, True),
}
_TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "huge", "mpol")
_PROPAGATION_WORDS = {"private", "rprivate", "shared", "rshared", "slave", "rslave"}
TMPFS_DEFAULTS = "noexec,nosuid,nodev"  # Docker's, which the user's options override word by word


def tmpfs_options(text: str) -> tuple[int, str]:
    """`--tmpfs PATH:OPTIONS` -> (mount flags, data), Docker's defaults first; ValueError for a bad word."""
    flags, data = 0, []
    for word in filter(None, f"{TMPFS_DEFAULTS},{text or ''}".split(",")):
        if word in _TMPFS_FLAGS:
            bit, on = _TMPFS_FLAGS[word]
            flags = flags | bit if on else flags & ~bit
        elif word.partition("=")[0] in _TMPFS_DATA and "=" in word:
            data.append(word)
        elif word not in _PROPAGATION_WORDS:
            raise ValueError(f"invalid tmpfs option {word!r}")
    return flags, ",".join(data)
