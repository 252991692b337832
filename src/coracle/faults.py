"""Named crash and stall points for crash-consistency and liveness tests.

`CORACLE_FAULT=<point>` in the daemon's environment makes it die (exit 99,
no clean-up, like a SIGKILL) when it reaches that point. Every layer calls
`fault("...")` at the places where a crash would leave the most half-made
state; the tests then restart the daemon and check that reconciliation
leaves a consistent world.

`CORACLE_FAULT=stall:<point>:<file>` instead holds the thread that reaches the
point (with whatever locks it holds) until `<file>` exists: what still answers
while an operation hangs there.
"""

from __future__ import annotations

import logging
import os
import time

ENV = "CORACLE_FAULT"
_point = os.environ.get(ENV, "")
_stalled = _point.startswith("stall:")
_stall_point, _, _release = _point.removeprefix("stall:").partition(":") if _stalled else ("", "", "")
STALL_POLL = 0.05  # seconds between looks for the release file


def fault(point: str) -> None:
    if _point == point:
        logging.getLogger("coracle.faults").error("fault injection: dying at %s", point)
        os._exit(99)
    if _stall_point == point:
        logging.getLogger("coracle.faults").error("fault injection: stalling at %s until %s exists", point, _release)
        while not os.path.exists(_release):
            time.sleep(STALL_POLL)
