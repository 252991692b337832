"""The build context as a tar stream, written without `tarfile`.

Why not `tarfile`: `coracle build` starts for every build, and importing
tarfile (with shutil, bz2, lzma and its own regexes behind it) costs more than
an all-cached build on the daemon. A context needs only ustar headers for
regular files, directories, links and special files, plus a PAX record for
what ustar cannot hold (long or non-ASCII names and link targets, files of
8 GiB and more), so the CLI writes those itself and streams them as it walks.
Owners are not sent (the daemon makes everything root's, as Docker does).
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator

BLOCK = 512
CHUNK = 1 << 20          # the stream's pieces: at most this much is held in memory
_MAX_SIZE = 0o77777777777  # what ustar's 12-byte size field holds
_TYPES = {stat.S_IFREG: b"0", stat.S_IFLNK: b"2", stat.S_IFCHR: b"3", stat.S_IFBLK: b"4",
          stat.S_IFDIR: b"5", stat.S_IFIFO: b"6"}


class ContextChanged(OSError):
    """A file shrank while it was being sent."""


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _header(name: bytes, mode: int, size: int, mtime: int, kind: bytes, linkname: bytes = b"",
            device: tuple[int, int] = (0, 0)) -> bytes:
    head = b"".join((
        name.ljust(100, b"\0"), _octal(mode, 8), _octal(0, 8), _octal(0, 8), _octal(size, 12),
        _octal(mtime, 12), b" " * 8, kind, linkname.ljust(100, b"\0"), b"ustar\x0000", b"\0" * 64,
        _octal(device[0], 8), _octal(device[1], 8), b"\0" * 155,
    )).ljust(BLOCK, b"\0")
    checksum = b"%06o\0 " % sum(head)
    return head[:148] + checksum + head[156:]


def _pax(records: dict[bytes, bytes]) -> bytes:
    """A PAX extended header ('x') carrying what the next ustar header cannot."""
    body = b""
    for key, value in records.items():
        fixed = len(key) + len(value) + 3           # ' ' '=' '\n'
        size = fixed + len(str(fixed))
        size = fixed + len(str(size))                # the length counts its own digits
        body += b"%d %s=%s\n" % (size, key, value)
    return _header(b"././@PaxHeader", 0o644, len(body), 0, b"x") + _padded(body)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def entry_header(arcname: str, st: os.stat_result, linkname: str = "") -> bytes:
    """The header block(s) of one entry; b"" for what a tar cannot hold (sockets)."""
    kind = _TYPES.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        return b""
    name = (arcname + "/" if kind == b"5" else arcname).encode("utf-8", "surrogateescape")
    link = linkname.encode("utf-8", "surrogateescape")
    size = st.st_size if kind == b"0" else 0
    records: dict[bytes, bytes] = {}
    if len(name) > 100 or not name.isascii():
        records[b"path"], name = name, name[:100]
    if len(link) > 100 or not link.isascii():
        records[b"linkpath"], link = link, link[:100]
    if size > _MAX_SIZE:
        records[b"size"], size = str(size).encode(), 0
    device = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in (b"3", b"4") else (0, 0)
    head = _header(name, stat.S_IMODE(st.st_mode), size, int(st.st_mtime), kind, link, device)
    return (_pax(records) if records else b"") + head


def file_blocks(path: str, size: int) -> Iterator[bytes]:
    """A regular file's contents, padded to whole blocks."""
    left = size
    with open(path, "rb") as f:
        while left:
            data = f.read(min(left, CHUNK))
            if not data:
                raise ContextChanged(f"{path} changed while it was being sent")
            left -= len(data)
            yield data
    if size % BLOCK:
        yield b"\0" * (BLOCK - size % BLOCK)


def stream(entries: Iterator[tuple[str, str | None, os.stat_result, bytes | None]]) -> Iterator[bytes]:
    """The tar of (name in the archive, path on disk or None, lstat, contents when not on disk),
    in pieces of about CHUNK bytes."""
    buffer = bytearray()
    for arcname, path, st, data in entries:
        linkname = os.readlink(path) if path is not None and stat.S_ISLNK(st.st_mode) else ""
        head = entry_header(arcname, st, linkname)
        if not head:
            continue
        buffer += head
        if data is not None:
            buffer += _padded(data)
        elif path is not None and stat.S_ISREG(st.st_mode):
            for block in file_blocks(path, st.st_size):
                buffer += block
                if len(buffer) >= CHUNK:
                    yield bytes(buffer)
                    buffer.clear()
        if len(buffer) >= CHUNK:
            yield bytes(buffer)
            buffer.clear()
    buffer += b"\0" * (2 * BLOCK)
    yield bytes(buffer)
