"""Fixtures for image tests: a throwaway image store and an overlay mount helper."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

from coracle.images import ImageService
from coracle.store import Store


@pytest.fixture
def images(tmp_path: Path) -> Iterator[ImageService]:
    db = Store(tmp_path / "state.db")
    try:
        yield ImageService(tmp_path / "images", db)
    finally:
        db.close()


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[[str], ImageService]]:
    """More stores side by side (a 'clean machine' to load or pull into)."""
    opened: list[Store] = []

    def make(name: str) -> ImageService:
        db = Store(tmp_path / name / "state.db")
        opened.append(db)
        return ImageService(tmp_path / name / "images", db)

    try:
        yield make
    finally:
        for db in opened:
            db.close()


@pytest.fixture
def in_overlay(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """in_overlay(lower, script, name="overlay"): the upper dir stays at tmp_path/name/upper."""
    return lambda lower, script, name="overlay": run_in_overlay(lower, tmp_path / name, script)


def make_tar(entries: list[tuple], gzipped: bool = False) -> bytes:
    """A tar from (name, content) for files, (name, None) for dirs,
    (name, "->", target) for symlinks, (name, "=>", target) for hard links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry in entries:
            info = tarfile.TarInfo(entry[0])
            info.mtime = 1_700_000_000
            data = None
            if len(entry) == 3:
                info.type = tarfile.SYMTYPE if entry[1] == "->" else tarfile.LNKTYPE
                info.linkname = entry[2]
            elif entry[1] is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                data = entry[1] if isinstance(entry[1], bytes) else entry[1].encode()
                info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gzipped else raw


def run_in_overlay(lower: list[str], tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    """Mount lower (lowest first) as overlayfs in a private mount namespace, run script
    chrooted into it with busybox sh; the mount dies with the namespace."""
    upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(reversed(lower))},upperdir={upper},workdir={work}"
    outer = f'mount -t overlay overlay -o "{opts}" "{merged}" && exec chroot "{merged}" /bin/sh -c "$0"'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", outer, script],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def tar_of() -> Callable[..., bytes]:
    return make_tar
