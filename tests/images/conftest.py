"""Fixtures for image tests: a throwaway image store and an overlay mount helper."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from coracle.images import ImageStore
from coracle.store import Store


@pytest.fixture
def images(tmp_path: Path) -> Iterator[ImageStore]:
    db = Store(tmp_path / "state.db")
    try:
        yield ImageStore(tmp_path / "images", db)
    finally:
        db.close()


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[[str], ImageStore]]:
    """More stores side by side (a 'clean machine' to load or pull into)."""
    opened: list[Store] = []

    def make(name: str) -> ImageStore:
        db = Store(tmp_path / name / "state.db")
        opened.append(db)
        return ImageStore(tmp_path / name / "images", db)

    try:
        yield make
    finally:
        for db in opened:
            db.close()


@pytest.fixture
def in_overlay(tmp_path: Path) -> Callable[[list[str], str], subprocess.CompletedProcess]:
    return lambda lower, script: run_in_overlay(lower, tmp_path / "overlay", script)


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
