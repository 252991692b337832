"""Undo on failure, written once: the steps that took effect so far are reversed
when a multi-step operation (a start, an attach, a connect) fails.

Like contextlib.ExitStack, but the registered steps run only when the block
raises, and a step that fails does not stop the others nor hide the first
error: each teardown error is logged, kept in `errors`, and attached as a
note to the original exception, which is what propagates.

    with Undo(f"attach of {cid}") as undo:
        lease = ipam.allocate(...)
        undo.add(lambda: ipam.release(lease))
        ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

__all__ = ["Undo"]

log = logging.getLogger(__name__)


class Undo:
    """Steps to reverse, newest first, if the block they were registered in fails."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._steps: list[Callable[[], object]] = []
        self.errors: list[Exception] = []

    def add(self, step: Callable[[], object]) -> None:
        """Register the reversal of something that just took effect."""
        self._steps.append(step)

    def rollback(self) -> list[Exception]:
        """Run every registered step, newest first; returns the teardown errors (also in `errors`)."""
        steps, self._steps = self._steps, []
        for step in reversed(steps):
            try:
                step()
            except Exception as exc:  # keep undoing: every later step still has something to release
                log.exception("undo of a failed %s", self.what)
                self.errors.append(exc)
        return self.errors

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self._steps.clear()  # it all took effect: nothing to reverse
            return
        for error in self.rollback():
            exc.add_note(f"while undoing the failed {self.what}: {error!r}")
