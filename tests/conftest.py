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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from harness import SESSION_TAG, unique  # unique: also found by the other conftests

if TYPE_CHECKING:
    import docker

    from harness import Daemon


def sh(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a host tool as an independent witness (ip, nft, cat...)."""
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


# Shared fixtures that only root can set up: network namespaces and daemons,
# cgroups, overlay mounts, image stores (layers keep their files' owners), and
# API servers (their socket is made root-owned). A test using any of them,
# directly or through another fixture, belongs to the root tier; a module that
# needs root without them says so with `pytestmark = pytest.mark.root`.
ROOT_FIXTURES = frozenset({
    "netns", "daemon", "fresh_daemon",  # this file
    "parent", "cgroup", "held",  # cgroups/
    "images", "make_store", "in_overlay",  # images/
    "lower", "containers", "remapped",  # security/, userns/
    "engine", "srv",  # cli/, api/
})

NOT_ROOT = "needs root (namespaces, cgroups, nftables): run the root tier as root"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Sort tests into the two tiers, and skip the root tier when not running as root."""
    for item in items:
        if ROOT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)
        if os.geteuid() != 0 and item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT))


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
