"""Undo on failure: every step reversed, newest first, the first error is the one reported."""

from __future__ import annotations

import pytest

from coracle.undo import Undo


def test_a_failure_reverses_every_step_newest_first_and_keeps_the_original_error() -> None:
    done: list[str] = []

    def broken() -> None:
        done.append("broken")
        raise OSError("device busy")

    with pytest.raises(ValueError, match="bad address") as caught, Undo("attach of c1") as undo:
        undo.add(lambda: done.append("lease"))
        undo.add(broken)
        undo.add(lambda: done.append("veth"))
        raise ValueError("bad address")
    assert done == ["veth", "broken", "lease"]  # a failing step does not stop the ones before it
    assert [str(e) for e in undo.errors] == ["device busy"]
    assert any("device busy" in note and "attach of c1" in note for note in caught.value.__notes__)


def test_success_reverses_nothing() -> None:
    done: list[str] = []
    with Undo("start") as undo:
        undo.add(lambda: done.append("undone"))
    assert done == [] and undo.errors == []
