"""Fixtures for the CLI tests: a fake Engine API on a temporary socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import fakeengine
from fakeengine import FakeEngine

from coracle.cli import launcher


@pytest.fixture(scope="session", autouse=True)
def installed_command(tmp_path_factory: Any) -> Iterator[None]:
    """`coracle` as scripts/install.sh installs it: the launcher that starts without site."""
    path = str(tmp_path_factory.mktemp("bin") / "coracle")
    launcher.write(path)
    saved, fakeengine.COMMAND = fakeengine.COMMAND, [path]
    yield
    fakeengine.COMMAND = saved


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[FakeEngine]:
    fake = FakeEngine(str(tmp_path / "engine.sock"))
    fake.start()
    yield fake
    fake.stop()
