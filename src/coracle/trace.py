"""Where one request's time goes: per-phase timings, logged when tracing is on.

`coracled --debug` or CORACLE_TRACE=1 in the daemon's environment turns it on;
each traced request then logs one line such as
`start 3f2a1b9c0d4e: spawn 4.1 ms, cgroup 1.2 ms, network 0.3 ms, files 0.4 ms,
release 2.0 ms, total 8.0 ms`. Off, a phase mark costs one clock read.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("coracle.trace")


def enable() -> None:
    log.setLevel(logging.DEBUG)


def enabled_by_environment() -> bool:
    return os.environ.get("CORACLE_TRACE", "") not in ("", "0")


class Phases:
    """The phases of one request, each timed from the end of the one before."""

    def __init__(self, what: str, ident: str) -> None:
        self.what, self.ident = what, ident
        self.start = self.last = time.perf_counter()
        self.marks: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.marks.append((phase, now - self.last))
        self.last = now

    def done(self) -> None:
        if log.isEnabledFor(logging.DEBUG):
            parts = [f"{phase} {seconds * 1000:.1f} ms" for phase, seconds in self.marks]
            log.debug("%s %s: %s, total %.1f ms", self.what, self.ident[:12], ", ".join(parts),
                      (self.last - self.start) * 1000)
