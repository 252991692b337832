"""Layer tars <-> overlayfs directories.

Unpacking follows the OCI layer spec and writes the result in the form overlayfs
reads at run time: `.wh.NAME` becomes a 0/0 character device NAME (a whiteout),
`.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. Packing (for
commit) does the reverse on a container's upper directory.

A layer tar is untrusted input. Every member name is normalised relative to the
layer directory, `..` is refused, and no write ever goes through a symlink or a
non-directory found on the way (each path component is checked with lstat), so a
hostile tar cannot write outside the layer directory.
"""

from __future__ import annotations

import errno
import bz2
import gzip
import lzma
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import threading
from typing import BinaryIO, Protocol

from coracle.errors import InvalidParameter
from coracle.runtime.fdtree import XATTR_PAX, Entry, TarWriter, open_dir, remove_tree, walk

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"


class Readable(Protocol):
    """What a layer is read from: forward-only reads (a pipe, a socket, a hashing reader)."""

    def read(self, n: int = -1, /) -> bytes: ...


class _Prepend:
    """A reader that yields some already-read bytes before the rest of a stream."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                out, self.head = self.head + self.rest.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.rest.read(n)


class HashingReader:
    """Hashes (sha256) and counts everything read through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.hash, self.count = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class SizeBudget:
    """How many bytes of layer tar one import, load or pull may still unpack (--max-image-size).

    Compression hides size: a 1 MB gzip of zeros is a 1 GB layer, so the bound is
    on what comes out of the decompressor, summed over the layers of one
    operation (a pull unpacks its layers on several threads)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def meter(self, f: BinaryIO, charge: bool = True) -> BinaryIO:
        """f, refusing to yield more than the budget allows. `charge`: what is read counts
        against the budget (the unpacked layer); otherwise it is only checked (a staging copy
        of content that will be charged when unpacked)."""
        # _Metered has the reading methods of BinaryIO that tarfile and the copies use
        return _Metered(f, self, charge)  # type: ignore[return-value]

    def account(self, n: int, seen: int, charge: bool) -> None:
        with self._lock:
            if charge:
                self.used += n
            total = self.used + (0 if charge else seen)
        if total > self.limit:
            raise InvalidParameter(f"the image unpacks to more than {self.limit} bytes, the most this daemon "
                                   "accepts (coracled --max-image-size)")


class _Metered:
    def __init__(self, f: BinaryIO, budget: SizeBudget, charge: bool) -> None:
        self.f, self.budget, self.charge, self.seen = f, budget, charge, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.seen += len(data)
        self.budget.account(len(data), self.seen, self.charge)
        return data


def compression(head: bytes) -> str:
    """The compression a stream's first bytes announce: "gzip", "bzip2", "xz", "zstd" or "" (plain)."""
    for name, magic in (("gzip", GZIP_MAGIC), ("bzip2", BZIP2_MAGIC), ("xz", XZ_MAGIC), ("zstd", ZSTD_MAGIC)):
        if head.startswith(magic):
            return name
    return ""


def decompressed(f: Readable) -> BinaryIO:
    """The tar stream inside `f`, whether `f` is plain, gzip, bzip2 or xz (sniffed, like Docker).

    Always a forward-only stream decompressor, so whoever reads it through a
    SizeBudget meter bounds what an archive may expand to.
    """
    head = f.read(6)
    while len(head) < 6:
        more = f.read(6 - len(head))
        if not more:
            break
        head += more
    stream = _Prepend(head, f)
    kind = compression(head)
    # The decompressors only seek to rewind, which no reader here does: a forward-only stream serves.
    if kind == "gzip":
        # the stubs want a seekable file; a forward-only reader serves (see above)
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[call-overload]
    if kind == "bzip2":
        return bz2.BZ2File(stream, mode="rb")  # type: ignore[call-overload]  # a forward-only reader serves
    if kind == "xz":
        # the stubs want a seekable file; a forward-only reader serves (see above)
        return lzma.LZMAFile(stream, mode="rb")  # type: ignore[return-value, arg-type]
    if kind == "zstd":
        raise InvalidParameter("zstd-compressed archives are not supported; use gzip, bzip2, xz or plain tar")
    return stream  # type: ignore[return-value]  # read() is all tarfile needs


def clean_name(name: str) -> str:
    """A member name relative to the layer root ('' for the root itself); refuses `..`."""
    norm = posixpath.normpath("/" + name).lstrip("/")
    if ".." in name.split("/"):
        raise InvalidParameter(f"layer member {name!r} points outside the layer")
    return "" if norm == "." else norm


class _Unpacker:
    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.dirs: set[str] = {""}
        self.dir_times: list[tuple[str, int]] = []
        self.size = 0

    def _parent(self, rel: str) -> str:
        """Absolute path of rel's parent, creating missing directories, never via a symlink."""
        parent = posixpath.dirname(rel)
        if parent in self.dirs:
            return os.path.join(self.dest, parent)
        cur = ""
        for comp in parent.split("/"):
            cur = posixpath.join(cur, comp) if cur else comp
            if cur in self.dirs:
                continue
            path = os.path.join(self.dest, cur)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise InvalidParameter(f"layer member {rel!r} goes through {cur!r}, which is not a directory")
            self.dirs.add(cur)
        return os.path.join(self.dest, parent)

    def _clear(self, rel: str, path: str, keep_dir: bool = False) -> None:
        """Remove whatever this layer already has at path (a later member replaces it)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            remove_tree(path)
            self.dirs = {d for d in self.dirs if d != rel and not d.startswith(rel + "/")}
        else:
            os.unlink(path)

    def apply(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = clean_name(m.name)
        if rel == "":
            return
        base = posixpath.basename(rel)
        parent = self._parent(rel)
        if base.startswith(WHITEOUT):
            if base == OPAQUE:
                os.setxattr(parent, OPAQUE_XATTR, b"y")
            elif not base.startswith(WHITEOUT + WHITEOUT):
                hidden = base[len(WHITEOUT):]
                if hidden in ("", ".", ".."):
                    raise InvalidParameter(f"layer member {m.name!r} is not a valid whiteout")
                target_rel = posixpath.join(posixpath.dirname(rel), hidden)
                target = os.path.join(parent, hidden)
                self._clear(target_rel, target)
                os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            return
        path = os.path.join(parent, base)
        if m.isdir():
            self._clear(rel, path, keep_dir=True)
            if not os.path.isdir(path) or os.path.islink(path):
                os.mkdir(path, 0o755)
            self.dirs.add(rel)
        else:
            self._clear(rel, path)
            if m.isreg():
                src = tf.extractfile(m)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    if src is not None:
                        shutil.copyfileobj(src, out, 1 << 20)
                self.size += m.size
            elif m.issym():
                os.symlink(m.linkname, path)
            elif m.islnk():
                src_rel = clean_name(m.linkname)
                src_path = os.path.join(self._parent(src_rel), posixpath.basename(src_rel))
                if not os.path.lexists(src_path):
                    raise InvalidParameter(f"layer hard link {m.name!r} points to missing {m.linkname!r}")
                os.link(src_path, path, follow_symlinks=False)
                return  # the link shares the inode, and so its owner, mode and times
            elif m.ischr() or m.isblk():
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            elif m.isfifo():
                os.mkfifo(path, 0o600)
            else:
                return
        self._metadata(m, path)

    def _metadata(self, m: tarfile.TarInfo, path: str) -> None:
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)  # after chown, which clears set-id bits
        for key, value in m.pax_headers.items():
            if key.startswith(XATTR_PAX):
                name = key[len(XATTR_PAX):]
                if name.startswith("trusted.overlay."):
                    continue  # never let a layer forge overlayfs state
                try:
                    os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EINVAL):
                        raise
        if m.isdir():
            self.dir_times.append((path, int(m.mtime)))
        else:
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> None:
        """Directory times last: creating their children changed them."""
        for path, mtime in reversed(self.dir_times):
            os.utime(path, (mtime, mtime), follow_symlinks=False)


def unpack(f: BinaryIO, dest: str, budget: SizeBudget | None = None) -> tuple[str, int]:
    """Unpack a (possibly gzip) layer tar into the existing directory dest, charging `budget`.

    Returns (diff id, size): the sha256 of the uncompressed tar, which the caller
    checks against the image config, and the bytes of file content.
    """
    tar = decompressed(f)
    reader = HashingReader(budget.meter(tar) if budget else tar)
    unpacker = _Unpacker(dest)
    try:
        # the stubs want a seekable file; stream mode ("r|") only reads
        with tarfile.open(fileobj=reader, mode="r|", errorlevel=2) as tf:  # type: ignore[call-overload]
            for member in tf:
                unpacker.apply(tf, member)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
        raise InvalidParameter(f"the layer is not a valid tar archive: {exc}") from None
    reader.drain()
    unpacker.finish()
    return reader.digest, unpacker.size


# The diff id of a layer without a single entry: what `pack` makes of an unchanged upper directory
# (two zero blocks, padded to tarfile's record size).
EMPTY_DIFF_ID = "sha256:" + hashlib.sha256(bytes(tarfile.RECORDSIZE)).hexdigest()


def pack(upper: str, out: BinaryIO, skip: frozenset[str] = frozenset()) -> None:
    """Write a container's overlay upper directory as an OCI layer tar.

    Overlay whiteouts (0/0 character devices) become `.wh.NAME` entries and
    opaque directories get a `.wh..wh..opq` entry, so the layer means the same
    thing to any runtime that applies it on top of the image's layers. The
    directory belongs to the container: it is read by descriptor (fdtree), so
    a directory swapped for a symlink while it is read is never followed.
    Paths in `skip` (mount points of a build step) are left out while they are empty.
    """
    top = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            writer = TarWriter(tf, keep_xattr=lambda name: not name.startswith("trusted.overlay."))
            for e in walk(top):
                if e.path in skip and _empty(e):
                    continue
                if stat.S_ISCHR(e.stat.st_mode) and e.stat.st_rdev == 0:
                    ti = tarfile.TarInfo(posixpath.join(posixpath.dirname(e.path), WHITEOUT + e.name))
                    ti.mtime = int(e.stat.st_mtime)
                    tf.addfile(ti)
                    continue
                writer.add(e.path, e.parent, e.name, e.stat)
                if stat.S_ISDIR(e.stat.st_mode) and _opaque(e):
                    marker = tarfile.TarInfo(posixpath.join(e.path, OPAQUE))
                    marker.mtime = int(e.stat.st_mtime)
                    tf.addfile(marker)
    finally:
        os.close(top)


def _empty(e: Entry) -> bool:
    """An empty directory or file: what a mount point left behind, read by descriptor."""
    if stat.S_ISREG(e.stat.st_mode):
        return e.stat.st_size == 0
    if not stat.S_ISDIR(e.stat.st_mode):
        return False
    fd = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=e.parent)
    try:
        return not os.listdir(fd)
    finally:
        os.close(fd)


def _opaque(e: Entry) -> bool:
    try:
        fd = open_dir(e.parent, e.name, e.stat)
    except OSError:
        return False  # gone or swapped since it was listed: no marker for what is not there
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False
    finally:
        os.close(fd)
