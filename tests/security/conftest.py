"""Fixtures of the security tests; the helpers live in security_support.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

import harness
from security_support import SUID_BUSYBOX, Containers


@pytest.fixture(scope="session")
def unique() -> Callable[[str], str]:
    return harness.unique


@pytest.fixture(scope="session")
def lower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox image: applets, root and nobody, and a setuid-root copy of busybox."""
    root = tmp_path_factory.mktemp("seclower")
    (root / "bin").mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "suid").mkdir()
    shutil.copy("/bin/busybox", root / SUID_BUSYBOX.lstrip("/"))
    os.chmod(root / SUID_BUSYBOX.lstrip("/"), 0o4755)
    (root / "etc").mkdir()
    (root / "etc" / "busybox.conf").write_text("[SUID]\ngrep = ssx 0.0\nid = ssx 0.0\n")
    os.chmod(root / "etc" / "busybox.conf", 0o600)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    return root


@pytest.fixture
def containers(tmp_path: Path, lower: Path, unique: Callable[[str], str]) -> Iterator[Containers]:
    c = Containers(tmp_path, lower, unique("coracle-sec-"))
    try:
        yield c
    finally:
        c.close()


