"""Fixtures for cgroup tests: a private cgroup parent and processes held until
they have been placed in a cgroup.

The parent is `coracle-test-<unique>` at the top of every hierarchy; teardown
kills whatever is left in it and removes it bottom-up without relying on the
code under test, so a broken destroy() cannot leave cgroups behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, IO

import pytest

from coracle.cgroups import V1Manager




@pytest.fixture(scope="session")
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """unique() of tests/conftest.py, found through pytest because both files are
    named conftest and cannot import one another."""
    wanted = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conftest.py")
    for plugin in request.config.pluginmanager.get_plugins():
        if os.path.abspath(getattr(plugin, "__file__", None) or "") == wanted:
            return plugin.unique
    raise RuntimeError("tests/conftest.py is not loaded")

ROOT = "/sys/fs/cgroup"


def _scrub(top: str) -> None:
    """Kill every task under `top` and rmdir it deepest first (independent of coracle)."""
    if not os.path.isdir(top):
        return
    walk = sorted(os.walk(top), key=lambda w: -w[0].count("/"))
    for dirpath, _, _ in walk:
        for name in ("freezer.state", "cgroup.freeze"):
            try:
                with open(os.path.join(dirpath, name), "w") as f:
                    f.write("THAWED" if name == "freezer.state" else "0")
            except OSError:
                pass
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                for pid in f.read().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    for dirpath, _, _ in walk:
        for _ in range(200):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


@pytest.fixture
def parent(unique: Callable[[str], str]) -> Iterator[str]:
    """A unique cgroup parent name, removed from every hierarchy afterwards."""
    name = unique("coracle-test-")
    try:
        yield name
    finally:
        for entry in os.scandir(ROOT):
            _scrub(os.path.join(ROOT, entry.name, name))
        leftovers = [e.name for e in os.scandir(ROOT) if os.path.exists(os.path.join(ROOT, e.name, name))]
        assert not leftovers, f"cgroup {name} left behind in {leftovers}"


@pytest.fixture
def cgroup(parent: str, unique: Callable[[str], str]) -> V1Manager:
    """A created v1 cgroup for one container."""
    m = V1Manager(f"{parent}/{unique('c')}", ROOT)
    m.create()
    return m


class Held:
    """A python3 process that waits on stdin before running `code`, so that it
    can be put in a cgroup before it does anything (as the engine holds PID 1)."""

    def __init__(self, code: str, stdout: int | IO[bytes] | None = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys\nsys.stdin.readline()\n{code}"],
            stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def held() -> Iterator[Callable[..., Held]]:
    made: list[Held] = []

    def make(code: str, **kw: Any) -> Held:
        h = Held(code, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.proc.poll() is None:
            h.proc.kill()
        h.proc.wait()
