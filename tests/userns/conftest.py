"""Fixtures of the user namespace tests: remapped containers built as the engine builds them.

The runtime-level containers reuse the security tests' helper (monitor, cgroup,
release, json-file log) with one difference: every spec carries the id maps
that `--userns-remap` would give it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

import harness
from userns_support import RemappedContainers


@pytest.fixture(scope="session")
def unique() -> Callable[[str], str]:
    return harness.unique


@pytest.fixture(scope="session")
def lower() -> Iterator[Path]:
    """A busybox image owned by host root, as unpacked layers are."""
    root = traversable("coracle-userns-lower-")
    (root / "bin").mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(root / "etc" / "shadow", 0o600)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def traversable(prefix: str) -> Path:
    """A fresh directory under /tmp every id may traverse: the container's root, an
    unprivileged id on the host, must reach its rootfs, upper and work dirs."""
    path = Path("/tmp") / harness.unique(prefix)
    path.mkdir(mode=0o755)
    return path


@pytest.fixture
def remapped(lower: Path, unique: Callable[[str], str]) -> Iterator[RemappedContainers]:
    base = traversable("coracle-userns-")
    c = RemappedContainers(base, lower, unique("coracle-userns-"))
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(base, ignore_errors=True)
