"""Fixtures of the security tests; the helpers live in security_support.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from collections.abc import Callable, Iterator

import docker
import pytest

import harness
from harness import Daemon
from security_support import SUID_BUSYBOX, Containers


@pytest.fixture(scope="session")
def unique() -> Callable[[str], str]:
    return harness.unique


@pytest.fixture(scope="session")
def lower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox image: applets, root and nobody, and a setuid-root copy of busybox."""
    root = harness.busybox_rootfs(tmp_path_factory.mktemp("seclower"))
    (root / "suid").mkdir()
    shutil.copy("/bin/busybox", root / SUID_BUSYBOX.lstrip("/"))
    os.chmod(root / SUID_BUSYBOX.lstrip("/"), 0o4755)
    (root / "etc" / "busybox.conf").write_text("[SUID]\ngrep = ssx 0.0\nid = ssx 0.0\n")
    os.chmod(root / "etc" / "busybox.conf", 0o600)
    return root


@pytest.fixture
def containers(tmp_path: Path, lower: Path, unique: Callable[[str], str]) -> Iterator[Containers]:
    c = Containers(tmp_path, lower, unique("coracle-sec-"))
    try:
        yield c
    finally:
        c.close()




@pytest.fixture
def client(daemon: Daemon) -> Iterator[docker.DockerClient]:
    """The Docker SDK on the session's daemon; containers the test made are removed afterwards."""
    c = daemon.sdk()
    before = {ctr.id for ctr in c.containers.list(all=True)}
    try:
        yield c
    finally:
        for ctr in c.containers.list(all=True):
            if ctr.id not in before:
                ctr.remove(force=True)
        c.close()
