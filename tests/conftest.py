"""Shared test world: throwaway network namespaces and unique names.

Every test that touches the kernel does it inside namespaces it made itself
and removes them afterwards, even on failure; the machine's own network is
never touched. Names carry a per-session random tag so that several test runs
on one machine (or a run next to a real daemon) cannot collide.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from typing import TYPE_CHECKING
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/harness.py

from harness import SESSION_TAG, unique  # noqa: E402  (re-exported for older imports)

if TYPE_CHECKING:
    import docker

    from harness import Daemon


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a host tool as an independent witness (ip, nft, cat...)."""
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.exit("coracle's tests need root (namespaces, cgroups, nftables)", returncode=2)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace acting as a throwaway 'host'; removed afterwards."""
    name = unique("ct")
    sh("ip", "netns", "add", name)
    sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    """One coracled shared by a whole test session (tests must clean up their own containers)."""
    from harness import Daemon

    d = Daemon(SESSION_TAG)
    d.create_netns()
    try:
        d.start()
        yield d
    finally:
        d.destroy()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[docker.DockerClient]:
    """The Docker SDK talking to the session's daemon."""
    c = daemon.sdk()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fresh_daemon() -> Iterator[Daemon]:
    """A private coracled for tests that stop, kill or break the daemon itself."""
    from harness import private_daemon

    with private_daemon(SESSION_TAG + secrets.token_hex(2), start=False) as d:
        yield d
