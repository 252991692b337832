"""COPY and ADD: what goes where, as one tar that the engine unpacks inside a step container.

Docker's destination rules: a destination ending in `/`, several sources, a
directory source or an existing directory make the destination a directory
(a directory source contributes its contents); otherwise a single file is
copied to exactly that path. Files land owned by root (or `--chown`, names
resolved in the image's own /etc/passwd and /etc/group, read out through the
confined archive helper), with their modes (or `--chmod`) and times. ADD also
unpacks a local tar archive and fetches a URL.

The tar is written on the host from data the daemon may read: the build
context (the client's), heredocs, downloads, and other images' files streamed
out of a confined archive helper. It is unpacked only by that helper.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Any
from collections.abc import Iterator

from coracle.build.context import Context, Source
from coracle.errors import InvalidParameter

GO_DIR = 1 << 31  # the directory bit of Docker's PathStat mode


@dataclass
class Piece:
    """One source of a COPY/ADD, as the tar entries it contributes (names relative to its root)."""
    label: str                       # for the history: file:..., dir:..., heredoc, url
    is_dir: bool                     # its contents go below the destination directory
    digest: str                      # what the cache key sees
    entries: Any = None              # () -> Iterator[(relative name, TarInfo, data or None)]
    preserve_owner: bool = False     # an ADD archive keeps the owners it carries


def context_piece(context: Context, source: Source) -> Piece:
    def entries() -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes] | None]]:
        for inside, path, st in context.files(source):
            info = tarfile.TarInfo(inside)
            info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                yield inside, info, None
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                yield inside, info, None
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as f:
                    yield inside, info, f

    return Piece(("dir:" if source.is_dir else "file:"), source.is_dir, context.checksum([source]), entries)


def heredoc_piece(content: str) -> Piece:
    data = content.encode()

    def entries() -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes] | None]]:
        info = tarfile.TarInfo("")
        info.mode, info.mtime, info.size = 0o644, int(time.time()), len(data)
        yield "", info, io.BytesIO(data)

    return Piece("heredoc:", False, hashlib.sha256(data).hexdigest(), entries)


def archive_piece(context: Context, source: Source) -> Piece | None:
    """A local tar archive (plain, gzip, bzip2, xz) that ADD unpacks, or None if it is not one."""
    if source.is_dir or not os.path.isfile(source.path) or not tarfile.is_tarfile(source.path):
        return None

    def entries() -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes] | None]]:
        with tarfile.open(source.path, "r:*") as tar:
            for member in tar:
                name = posixpath.normpath("/" + member.name).lstrip("/")
                if ".." in member.name.split("/"):
                    raise InvalidParameter(f"ADD {source.rel}: archive entry {member.name!r} leaves the destination")
                if not name or name == ".":
                    continue
                yield name, member, tar.extractfile(member) if member.isreg() else None

    return Piece("file:", True, context.checksum([source]), entries, preserve_owner=True)


def url_piece(url: str, scratch: str) -> tuple[Piece, str]:
    """ADD <url>: the download (a clear error when it fails) and the file name it gets."""
    path = os.path.join(scratch, "download")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(path, "wb") as out:
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
            modified = resp.headers.get("Last-Modified")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InvalidParameter(f"failed to download {url}: {reason}") from None
    mtime = int(time.mktime(time.strptime(modified, "%a, %d %b %Y %H:%M:%S GMT"))) if modified else 0
    size = os.path.getsize(path)

    def entries() -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes] | None]]:
        info = tarfile.TarInfo("")
        info.mode, info.mtime, info.size = 0o600, mtime, size
        with open(path, "rb") as f:
            yield "", info, f

    name = posixpath.basename(urllib.parse.urlsplit(url).path) or "download"
    return Piece("url:", False, h.hexdigest(), entries), name


def exported_piece(stream: IO[bytes], is_dir: bool) -> Piece:
    """Files of another image, as the confined archive helper streams them (COPY --from; the
    image's id, not a digest of the files, is what the cache key sees)."""

    def entries() -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes] | None]]:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if ".." in parts:
                    raise InvalidParameter(f"COPY --from: entry {member.name!r} leaves the destination")
                name = "/".join(parts[1:] if not is_dir else parts)
                if is_dir and not name:
                    continue
                yield name, member, tar.extractfile(member) if member.isreg() else None

    return Piece("dir:" if is_dir else "file:", is_dir, "", entries)


@dataclass
class Placement:
    """Where pieces go: `dest` is a directory, or (one file) the file's own path."""
    dest: str
    into_dir: bool
    create_dir: bool = False    # the destination directory does not exist yet: make it (owned as --chown)
    chmod: int | None = None
    owner: tuple[int, int] | None = None   # --chown, as numbers
    names: list[str] = field(default_factory=list)  # one name per piece for files going into a directory


def write_tar(out: IO[bytes], pieces: list[Piece], placement: Placement) -> None:
    """The tar the archive helper unpacks at `/`: every entry at its final path."""
    root = placement.dest.strip("/")
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if placement.create_dir and placement.into_dir and root:
            info = tarfile.TarInfo(root)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            info.uid, info.gid = placement.owner or (0, 0)
            tar.addfile(info)
        for piece, name in zip(pieces, placement.names or [""] * len(pieces), strict=False):
            for rel, info, data in piece.entries():
                if piece.is_dir:
                    target = posixpath.join(root, rel) if rel else root
                elif placement.into_dir:
                    target = posixpath.join(root, name)
                else:
                    target = root
                if not target:
                    continue
                new = tarfile.TarInfo(target)
                new.type, new.mode, new.mtime, new.size = info.type, info.mode, info.mtime, info.size
                new.linkname = info.linkname
                if info.islnk():  # hard links point at a name inside the same piece
                    new.linkname = posixpath.join(root, posixpath.normpath("/" + info.linkname).lstrip("/"))
                if placement.owner is not None:
                    new.uid, new.gid = placement.owner
                elif piece.preserve_owner:
                    new.uid, new.gid = info.uid, info.gid
                if placement.chmod is not None and info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
                    new.mode = placement.chmod
                tar.addfile(new, data)


def parse_chown(spec: str, passwd: str, group: str) -> tuple[int, int]:
    """`--chown=user[:group]` as numbers, names looked up in the image's passwd and group files.
    A user without a group gets its uid as gid too (Docker's rule for COPY/ADD)."""
    user, _, grp = spec.partition(":")

    def lookup(table: str, name: str, kind: str) -> int:
        if name.isdigit():
            return int(name)
        for line in table.splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        raise InvalidParameter(f"unable to convert uid/gid chown string to host mapping: can't find {kind} "
                               f"for {name!r} in the image's /etc/{'passwd' if kind == 'uid' else 'group'}")

    uid = lookup(passwd, user, "uid")
    return uid, lookup(group, grp, "gid") if grp else uid


def parse_chmod(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        mode = int(value, 8)
    except ValueError:
        raise InvalidParameter(f"invalid chmod parameter {value!r}: it must be octal (like 755)") from None
    if not 0 <= mode <= 0o7777:
        raise InvalidParameter(f"invalid chmod parameter {value!r}")
    return mode

