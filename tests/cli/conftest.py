"""Fixtures for the CLI tests: a fake Engine API on a temporary socket."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fakeengine import FakeEngine  # noqa: E402


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[FakeEngine]:
    fake = FakeEngine(str(tmp_path / "engine.sock"))
    fake.start()
    yield fake
    fake.stop()
