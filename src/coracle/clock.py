"""Timestamps as Docker writes and reads them: RFC 3339, UTC, nanoseconds."""

from __future__ import annotations

import time
from datetime import datetime
from functools import lru_cache

ZERO = "0001-01-01T00:00:00Z"  # Go's zero time, Docker's "never"


def timestamp(ns: int | None = None) -> str:
    """`ns` nanoseconds since the epoch (default: now) as 2026-11-30T10:08:19.123456789Z."""
    if ns is None:
        ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


@lru_cache(maxsize=8192)  # pure, and `ps` turns the same start times into "Up 3 minutes" again and again
def epoch(stamp: str) -> float:
    """Seconds since the epoch of such a timestamp (any precision); 0 for one that does not parse."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    try:
        whole = datetime.fromisoformat(base + "+00:00").timestamp()
    except ValueError:
        return 0.0
    return whole + float("0." + frac) if frac.isdigit() else whole
