"""Fixtures for client compatibility tests: the real docker CLI, SDK and compose.

All tests share the session's coracled (tests/conftest.py `daemon`). Each test
removes what it made: the `clean` fixture (autouse) removes every container,
network and image tag that appeared during the test, so a failing test cannot
leave a name taken for the next one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from compat_helpers import Docker
from harness import Daemon


def _listing(daemon: Daemon) -> tuple[set[str], set[str], set[str]]:
    _, containers = daemon.api("GET", "/containers/json?all=1")
    _, networks = daemon.api("GET", "/networks")
    _, images = daemon.api("GET", "/images/json")
    return ({c["Id"] for c in containers}, {n["Id"] for n in networks},
            {t for i in images for t in (i["RepoTags"] or [])} | {i["Id"] for i in images})


@pytest.fixture(autouse=True)
def clean(daemon: Daemon) -> Iterator[None]:
    before = _listing(daemon)
    yield
    containers, networks, images = _listing(daemon)
    for cid in containers - before[0]:
        daemon.api("DELETE", f"/containers/{cid}?force=1")
    for nid in networks - before[1]:
        daemon.api("DELETE", f"/networks/{nid}")
    for ref in sorted(images - before[2], key=lambda r: r.startswith("sha256:")):
        daemon.api("DELETE", f"/images/{ref}?force=1")


@pytest.fixture
def docker(daemon: Daemon) -> Docker:
    """docker(*args, input=None, check=True, timeout=30): the real CLI against our daemon."""

    def run(*args: str, input: str | None = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return daemon.docker(*args, input=input, check=check, timeout=timeout)

    return run
