"""Content-addressed blobs: `<root>/blobs/sha256/<hex>`.

A blob reaches its final name only through rename() after its bytes were hashed
and matched the digest the caller expected, so a file at a digest's path can be
trusted without re-reading it: an interrupted write leaves at most a stray file
under `<root>/tmp`, which the next start-up removes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import zlib
from pathlib import Path
from typing import BinaryIO
from collections.abc import Callable, Iterable

from coracle.errors import InvalidParameter
from coracle.runtime.fdtree import remove_tree

CHUNK = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidParameter(f"unsupported or malformed digest {digest!r}")
    return hexpart


class DigestMismatch(InvalidParameter):
    """Content did not hash to the digest it was announced under."""


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def temp_path(self, hint: str = "blob") -> Path:
        """A fresh name under tmp/ for staging (same filesystem, so rename is atomic)."""
        return self.tmp / f"{hint}-{secrets.token_hex(8)}"

    def clear_temp(self) -> None:
        """Drop what interrupted writes left; called once when the store opens."""
        for entry in self.tmp.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                remove_tree(str(entry), ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / hex_of(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def put(self, data: bytes, expected: str | None = None) -> str:
        """Small content (a config, a manifest); content already stored is not written (and synced) again."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if (expected is None or digest == expected) and self.has(digest):
            return digest
        return self.write([data], expected)

    def write(self, chunks: Iterable[bytes], expected: str | None = None,
              on_chunk: Callable[[int], None] | None = None) -> str:
        """Stream chunks into the store; returns the digest. Verifies `expected` when given."""
        if expected is not None:
            hex_of(expected)
        tmp = self.temp_path()
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                    if on_chunk:
                        on_chunk(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            digest = "sha256:" + h.hexdigest()
            if expected is not None and digest != expected:
                raise DigestMismatch(f"content digest {digest} does not match the expected {expected}")
            os.replace(tmp, self.path(digest))
            return digest
        finally:
            tmp.unlink(missing_ok=True)

    def adopt(self, path: Path, digest: str) -> None:
        """Move an already verified staged file to its digest's name."""
        os.replace(path, self.path(digest))

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> list[str]:
        return ["sha256:" + p.name for p in self.dir.iterdir() if len(p.name) == 64]


def read_chunks(f: BinaryIO, size: int = CHUNK) -> Iterable[bytes]:
    while chunk := f.read(size):
        yield chunk


def gzip_chunks(f: BinaryIO) -> Iterable[bytes]:
    """gzip of f's bytes, streamed; deterministic (no name, mtime 0) so a layer
    compresses to the same blob, and so the same digest, every time."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    for chunk in read_chunks(f):
        if out := z.compress(chunk):
            yield out
    yield z.flush()
