"""Fixtures of the rootless tests: one throwaway user with a running rootless coracled."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator

import pytest

from rootless_support import RootlessUser


@pytest.fixture(scope="session")
def user() -> Iterator[RootlessUser]:
    """An ordinary user with subordinate ids and its rootless daemon; everything removed afterwards."""
    if not shutil.which("pasta") or not shutil.which("newuidmap"):
        pytest.skip("rootless mode needs pasta (passt) and newuidmap (uidmap)")
    u = RootlessUser(secrets.token_hex(3))
    try:
        u.create()
        u.start_daemon()
        yield u
    finally:
        left = u.destroy()
    assert not left, left


@pytest.fixture
def bare_user() -> Iterator[RootlessUser]:
    """A user made like `user`, with no daemon started."""
    u = RootlessUser(secrets.token_hex(3))
    try:
        u.create()
        yield u
    finally:
        left = u.destroy()
    assert not left, left
