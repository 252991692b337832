"""Restart policies (`no`, `always`, `unless-stopped`, `on-failure[:N]`) with Docker's back-off.

The delay starts at 100 ms and doubles after each restart up to one minute;
a container that ran for at least 10 seconds starts over at 100 ms. The count
lives in the container record (RestartCount), so it survives daemon restarts.
"""

from __future__ import annotations

import threading
from datetime import datetime
from collections.abc import Callable

from coracle.engine.container import Container

FIRST_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0


def _seconds(stamp: str) -> float:
    try:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


def wants_restart(c: Container) -> bool:
    """After an exit: whether its policy brings it back (never after a stop by the user)."""
    policy = c.host_config.restart_policy
    if c.private.manual_stop or policy.name == "no":
        return False
    if policy.name == "on-failure":
        retries = policy.maximum_retry_count
        return c.state.exit_code != 0 and (retries == 0 or c.restart_count < retries)
    return policy.name in ("always", "unless-stopped")


def comes_back_at_boot(c: Container) -> bool:
    """At daemon start: `always`, and `unless-stopped` unless the user stopped it, if it ever ran."""
    if c.state.running or not c.state.ever_finished:
        return False
    name = c.host_config.restart_policy.name
    return name == "always" or (name == "unless-stopped" and not c.private.manual_stop)


class RestartTracker:
    """Timers for pending restarts and the current back-off per container."""

    def __init__(self, restart: Callable[[str], None]) -> None:
        self._restart = restart
        self._lock = threading.Lock()
        self._timers: dict[str, threading.Timer] = {}
        self._delays: dict[str, float] = {}

    def delay(self, c: Container, immediate: bool = False) -> float | None:
        """How long to wait before restarting, or None if the policy says no."""
        if not wants_restart(c):
            return None
        if immediate:
            return 0.0
        ran = _seconds(c.state.finished_at) - _seconds(c.state.started_at)
        with self._lock:
            previous = self._delays.get(c.id)
            current = FIRST_DELAY if previous is None or ran >= RESET_AFTER else min(previous * 2, MAX_DELAY)
            self._delays[c.id] = current
        return current

    def schedule(self, cid: str, delay: float) -> None:
        timer = threading.Timer(delay, self._fire, args=(cid,))
        timer.daemon = True
        with self._lock:
            old = self._timers.pop(cid, None)
            self._timers[cid] = timer
        if old:
            old.cancel()
        timer.start()

    def _fire(self, cid: str) -> None:
        with self._lock:
            self._timers.pop(cid, None)
        self._restart(cid)

    def cancel(self, cid: str) -> None:
        with self._lock:
            timer = self._timers.pop(cid, None)
            self._delays.pop(cid, None)
        if timer:
            timer.cancel()
