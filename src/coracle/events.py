"""The event bus behind `docker events` and every wait on a container.

Publishers are engine threads; subscribers are asyncio tasks of the API. A
bounded history serves `--since`; a subscriber that falls behind loses events
rather than slowing the engine down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("coracle.events")

HISTORY = 1024


class Subscription:
    """One listener: an asyncio queue fed from any thread."""

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
        self.bus, self.loop = bus, loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=4096)

    def _deliver(self, event: dict[str, Any]) -> None:
        if not self.queue.full():
            self.queue.put_nowait(event)

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()

    def close(self) -> None:
        self.bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._watchers: list[Callable[[dict[str, Any]], None]] = []
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)

    def publish(self, type_: str, action: str, actor: str, attributes: dict[str, str] | None = None) -> dict[str, Any]:
        """Record an event in Docker's shape and hand it to every subscriber."""
        now = time.time_ns()
        event: dict[str, Any] = {
            "Type": type_, "Action": action,
            "Actor": {"ID": actor, "Attributes": dict(attributes or {})},
            "scope": "local", "time": now // 10**9, "timeNano": now,
        }
        if type_ == "container":  # the pre-1.22 fields the docker CLI still reads
            event.update({"status": action, "id": actor, "from": event["Actor"]["Attributes"].get("image", "")})
        with self._lock:
            self.history.append(event)
            subs = list(self._subs)
            watchers = list(self._watchers)
        for watcher in watchers:
            try:
                watcher(event)
            except Exception:
                log.exception("event watcher failed on %s", action)
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub._deliver, event)
            except RuntimeError:  # its loop is closed: the listener is gone
                self.unsubscribe(sub)
        return event

    def watch(self, watcher: Callable[[dict[str, Any]], None]) -> None:
        """Call `watcher` with every event in the publishing thread, before publish() returns: for
        what must know of a change before the request that made it is answered."""
        with self._lock:
            self._watchers.append(watcher)

    def subscribe(self) -> Subscription:
        sub = Subscription(self, asyncio.get_running_loop())
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def since(self, since_ns: int, until_ns: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.history
                    if e["timeNano"] >= since_ns and (until_ns is None or e["timeNano"] <= until_ns)]
