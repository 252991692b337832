"""Named crash points for crash-consistency tests.

`CORACLE_FAULT=<point>` in the daemon's environment makes it die (exit 99,
no clean-up, like a SIGKILL) when it reaches that point. Every layer calls
`fault("...")` at the places where a crash would leave the most half-made
state; the tests then restart the daemon and check that reconciliation
leaves a consistent world.
"""

from __future__ import annotations

import logging
import os

ENV = "CORACLE_FAULT"
_point = os.environ.get(ENV, "")


def fault(point: str) -> None:
    if _point == point:
        logging.getLogger("coracle.faults").error("fault injection: dying at %s", point)
        os._exit(99)
