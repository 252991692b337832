"""Repeated measurements taken alternately engine by engine, and their summaries.

Alternating (A B C, B C A, C A B ...) spreads machine drift (page cache, CPU
frequency, background load) over every engine equally instead of letting it
land on whichever engine happened to run last. Each sample also waits for the
machine to go quiet first (`settle`), so the clean-up an engine leaves running
after its CLI has returned (Docker's shim and containerd exit handling, coracle's
next spare child) is charged to no one's next sample: on two cores it otherwise
landed on whichever engine came next.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Series:
    """Samples of one metric for one client, or the reason there are none."""

    samples: list[float] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> dict:
        if not self.samples:
            return {"error": self.error or "no samples"}
        out = {"median": statistics.median(self.samples), "min": min(self.samples), "max": max(self.samples),
               "n": len(self.samples), "samples": self.samples}
        if self.error:
            out["error"] = self.error
        return out


def rotations(items: Sequence[T], rounds: int) -> list[list[T]]:
    """`rounds` orderings of items, each starting one further along."""
    n = len(items)
    return [[items[(r + i) % n] for i in range(n)] for r in range(rounds)] if n else []


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def settle(quiet: float = 0.1, window: float = 0.05, limit: float = 1.0) -> None:
    """Wait until one `window` shows the CPUs busy less than `quiet` of the time, at most `limit` s."""
    deadline = time.monotonic() + limit
    busy, total = cpu_busy()
    while time.monotonic() < deadline:
        time.sleep(window)
        busy2, total2 = cpu_busy()
        if total2 > total and (busy2 - busy) / (total2 - total) < quiet:
            return
        busy, total = busy2, total2


def alternate(clients: Sequence[T], repeat: int, fn: Callable[[T], float],
              key: Callable[[T], str]) -> dict[str, Series]:
    """Call fn(client) `repeat` times per client, interleaved, each on a quiet machine; a client that
    fails once is dropped."""
    series = {key(c): Series() for c in clients}
    for order in rotations(clients, repeat):
        for client in order:
            s = series[key(client)]
            if s.error:
                continue
            settle()
            try:
                s.samples.append(fn(client))
            except Exception as exc:  # recorded for the report; the other engines go on
                s.error = describe_error(exc)
    return series


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (AssertionError, KeyError, IndexError, TypeError, AttributeError)):
        text += " | " + traceback.format_exc(limit=3).strip().splitlines()[-2].strip()
    return text[-1200:]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
