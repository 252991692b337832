"""The build context: the client's tar unpacked on disk, and the files COPY/ADD take from it.

The context is the client's data, never a container's, so it is unpacked by
the daemon, but as untrusted input: an entry with `..`, an absolute or
escaping link, or a device node refuses the whole build (Docker's "data"
filter rules), and nothing is ever read through a symlink that leaves it.
It streams to disk (the memory of a build does not grow with its context).
`.dockerignore` hides files from COPY/ADD exactly as if they had not been sent.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import copy
import posixpath
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO
from collections.abc import Iterator

from coracle.build.ignore import IgnoreRules
from coracle.errors import InvalidParameter

_GLOB_CHARS = set("*?[")


@dataclass
class Source:
    """One context path COPY/ADD names, after glob expansion."""
    rel: str            # relative to the context root, "/"-separated ("" is the root)
    path: str           # on disk
    is_dir: bool


# tarfile's extraction filters came with Python 3.11.4; Debian 12's interpreter is 3.11.2.
EXTRACTION_FILTERS = hasattr(tarfile, "data_filter")


def _owned_by_root(member: tarfile.TarInfo, name: str, linkname: str) -> tarfile.TarInfo:
    """The member under its checked name, owned by root (TarInfo.replace is missing before 3.11.4)."""
    out = copy.copy(member)
    out.name, out.linkname, out.uid, out.gid, out.uname, out.gname = name, linkname, 0, 0, "", ""
    return out


def _checked_by_hand(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What data_filter refuses, for interpreters without it: names and link targets leaving the root."""
    name = posixpath.normpath(member.name.lstrip("/"))
    if name == ".." or name.startswith("../"):
        raise InvalidParameter(f"build context entry {member.name!r} is refused: it leaves the context")
    # link targets with no ".." at all: checked lexically, "c/.." looks inside, yet the kernel resolves
    # it through `c` (a symlink to "." makes it the parent of the root)
    if (member.issym() or member.islnk()) and (
            member.linkname.startswith("/") or ".." in member.linkname.split("/")):
        raise InvalidParameter(f"build context entry {member.name!r} is refused: its link target "
                               f"{member.linkname!r} leaves the context")
    return _owned_by_root(member, name, member.linkname)


def unpack(fileobj: BinaryIO, root: str) -> None:
    """Unpack the context tar (plain, gzip, bzip2 or xz) into the empty directory root."""

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        if member.issym() and member.linkname.startswith("/"):
            raise InvalidParameter(f"build context entry {member.name!r} is a symlink to an absolute path "
                                   f"({member.linkname}), which leaves the context")
        if not EXTRACTION_FILTERS:
            return _checked_by_hand(member)
        try:
            safe = tarfile.data_filter(member, dest)
        except tarfile.FilterError as exc:
            raise InvalidParameter(f"build context entry {member.name!r} is refused: {exc}") from None
        # the checked (relative) names, but the modes as sent: COPY keeps setuid bits and group write
        return _owned_by_root(member, safe.name, safe.linkname)

    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            extracted = False
            while True:
                try:
                    member = tar.next()
                except tarfile.ReadError as exc:
                    # The docker CLI appends a Dockerfile from outside the context without the
                    # last block's padding or the end-of-archive blocks; Docker reads that tar.
                    if extracted and "unexpected end of data" in str(exc):
                        break
                    raise
                if member is None:
                    break
                if EXTRACTION_FILTERS:
                    tar.extract(check(member, root), root, set_attrs=True, filter="fully_trusted")
                else:
                    tar.extract(check(member, root), root, set_attrs=True)
                extracted = True
    except tarfile.ReadError as exc:
        if "empty file" in str(exc):
            return
        raise InvalidParameter(f"the build context is not a valid tar archive: {exc}") from None
    except (EOFError, tarfile.TarError) as exc:
        raise InvalidParameter(f"the build context is not a valid tar archive: {exc}") from None


class Context:
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        try:
            with open(os.path.join(self.root, ".dockerignore"), errors="replace") as f:
                self.ignore = IgnoreRules(f.read())
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self.ignore = IgnoreRules()

    def _inside(self, rel: str) -> str:
        """The real path of a context path, resolving symlinks but never out of the context."""
        cleaned = posixpath.normpath("/" + rel).lstrip("/")
        if ".." in rel.split("/") and posixpath.normpath(rel).startswith(".."):
            raise InvalidParameter(f"forbidden path outside the build context: {rel}")
        real = os.path.realpath(os.path.join(self.root, cleaned))
        if real != self.root and not real.startswith(self.root + os.sep):
            raise InvalidParameter(f"forbidden path outside the build context: {rel} ({real})")
        return real

    def read_file(self, rel: str) -> bytes:
        """A file of the context (the Dockerfile)."""
        path = self._inside(rel)
        if not os.path.isfile(path):
            raise InvalidParameter(f"Cannot locate specified Dockerfile: {rel}")
        with open(path, "rb") as f:
            return f.read()

    def sources(self, pattern: str) -> list[Source]:
        """The context paths one COPY/ADD source names (a path or a glob); ignored paths never match."""
        cleaned = posixpath.normpath("/" + pattern).lstrip("/")
        if posixpath.normpath(pattern).startswith("..") or pattern.startswith("../"):
            raise InvalidParameter(f"forbidden path outside the build context: {pattern}")
        if not _GLOB_CHARS & set(cleaned):
            path = self._inside(cleaned)
            if not os.path.lexists(path) or (cleaned and self.ignore.ignored(cleaned)):
                raise InvalidParameter(f"failed to compute cache key: \"/{cleaned}\": not found")
            return [Source(cleaned, path, os.path.isdir(path))]
        found = []
        for rel, _ in self._walk(""):
            if fnmatch.fnmatchcase(rel, cleaned) and _glob_match(rel, cleaned):
                path = self._inside(rel)
                found.append(Source(rel, path, os.path.isdir(path) and not os.path.islink(path)))
        return sorted(found, key=lambda s: s.rel)

    def _walk(self, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        """(context path, lstat) of everything below rel that .dockerignore does not hide; never follows links."""
        base = os.path.join(self.root, rel) if rel else self.root
        try:
            names = sorted(os.listdir(base))
        except (NotADirectoryError, FileNotFoundError):
            return
        for name in names:
            child = f"{rel}/{name}" if rel else name
            st = os.lstat(os.path.join(base, name))
            hidden = self.ignore.ignored(child)
            if not hidden:
                yield child, st
            if stat.S_ISDIR(st.st_mode) and (not hidden or self.ignore.may_keep_below(child)):
                yield from self._walk(child)

    def files(self, source: Source) -> Iterator[tuple[str, str, os.stat_result]]:
        """(path relative to the source, path on disk, lstat) of a source and, for a directory, all below it."""
        if not source.is_dir:
            yield "", source.path, os.lstat(source.path)
            return
        real_rel = os.path.relpath(source.path, self.root)
        walk_from = "" if real_rel == "." else real_rel.replace(os.sep, "/")
        for rel, st in self._walk(walk_from):
            yield (rel[len(walk_from) + 1:] if walk_from else rel), os.path.join(self.root, rel), st

    def checksum(self, sources: list[Source]) -> str:
        """A digest of the sources' names, types, modes, link targets and contents (not times or owners)."""
        h = hashlib.sha256()
        for source in sources:
            h.update(f"source {source.rel}\0".encode())
            for inside, path, st in self.files(source):
                h.update(f"{inside}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(path).encode() + b"\0")
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
        return h.hexdigest()


def _glob_match(rel: str, pattern: str) -> bool:
    """Go's filepath.Match: wildcards do not cross `/`, so the depths must agree."""
    return rel.count("/") == pattern.count("/")
