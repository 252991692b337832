"""Fixtures for build tests: the real clients against the session's coracled.

`docker` runs the docker CLI with the classic builder protocol
(DOCKER_BUILDKIT=0). Each test removes what it made: containers, image tags
and ids that appeared, and the build cache.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from collections.abc import Iterator

import pytest

from build_helpers import Docker
from harness import Daemon


def _listing(daemon: Daemon) -> tuple[set[str], set[str]]:
    _, containers = daemon.api("GET", "/containers/json?all=1")
    _, images = daemon.api("GET", "/images/json")
    return ({c["Id"] for c in containers},
            {t for i in images for t in (i["RepoTags"] or [])} | {i["Id"] for i in images})


@pytest.fixture(autouse=True)
def clean(daemon: Daemon) -> Iterator[None]:
    before = _listing(daemon)
    yield
    containers, images = _listing(daemon)
    for cid in containers - before[0]:
        daemon.api("DELETE", f"/containers/{cid}?force=1")
    for ref in sorted(images - before[1], key=lambda r: r.startswith("sha256:")):
        daemon.api("DELETE", f"/images/{ref}?force=1")
    daemon.api("POST", "/build/prune")


@pytest.fixture
def docker(daemon: Daemon) -> Docker:
    """docker(*args, input=None, check=True, cwd=None): the real CLI, classic builder protocol."""

    def run(*args: str, input: str | None = None, check: bool = True, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": daemon.host, "DOCKER_BUILDKIT": "0"}
        res = subprocess.run(["docker", *args], input=input, capture_output=True, text=True, env=env,
                             timeout=timeout, cwd=cwd)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    return run
