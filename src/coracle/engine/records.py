"""The container records held in memory, indexed by id and by name.

Why: `docker ps` and `inspect` must answer while other clients create and start
containers. Reading the store takes its global lock and a transaction, and decoding
every record makes `get` by name and the name check of `create` O(N). The engine
keeps here what it saves: a read is a dictionary look-up that never waits behind a
lifecycle operation. The store stays the durable truth; this is loaded from it at
start-up and updated only after a write to it succeeded.

Each record is kept three times: its JSON text, from which callers that will modify
a record get their own copy; one decoded view shared by read-only callers, which
nobody may modify; and its typed `Container`, made once per save rather than once
per `ps` (a list of 200 containers is read far more often than any one is saved).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from coracle.engine.container import Container


class RecordIndex:
    """Records by id in creation order, and the id of each name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held for dictionary updates only, never across I/O
        self._bodies: dict[str, str] = {}
        self._views: dict[str, dict[str, Any]] = {}
        self._typed: dict[str, Container] = {}
        self._names: dict[str, str] = {}

    def load(self, records: list[dict[str, Any]]) -> None:
        """Replace everything with `records` (in the store's order, oldest first)."""
        bodies = {r["Id"]: json.dumps(r, separators=(",", ":")) for r in records}
        views = {cid: json.loads(body) for cid, body in bodies.items()}
        typed = {cid: Container.decode(body) for cid, body in bodies.items()}
        with self._lock:
            self._bodies, self._views, self._typed = bodies, views, typed
            self._names = {v["Name"]: cid for cid, v in self._views.items()}

    def put(self, body: str) -> None:
        """A record as saved (its stored JSON text)."""
        view = json.loads(body)
        typed = Container.decode(body)
        cid = view["Id"]
        with self._lock:
            old = self._views.get(cid)
            if old is not None and self._names.get(old["Name"]) == cid:
                del self._names[old["Name"]]
            self._bodies[cid] = body
            self._views[cid] = view
            self._typed[cid] = typed
            self._names[view["Name"]] = cid

    def drop(self, cid: str) -> None:
        with self._lock:
            self._bodies.pop(cid, None)
            self._typed.pop(cid, None)
            old = self._views.pop(cid, None)
            if old is not None and self._names.get(old["Name"]) == cid:
                del self._names[old["Name"]]

    def copies(self) -> list[dict[str, Any]]:
        with self._lock:
            bodies = list(self._bodies.values())
        return [json.loads(b) for b in bodies]

    def body(self, cid: str) -> str | None:
        """The record's stored JSON text: a caller's own copy is decoded from it (cheaper than copying)."""
        return self._bodies.get(cid)

    def view(self, cid: str) -> dict[str, Any] | None:
        """The shared read-only record: for answers built and sent at once."""
        return self._views.get(cid)

    def typed(self) -> list[Container]:
        """Every record as its shared typed `Container` (read-only, like the views), oldest first."""
        with self._lock:
            return list(self._typed.values())

    def id_of_name(self, name: str) -> str | None:
        return self._names.get(name)

    def ids_with_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            ids = list(self._bodies)
        return [cid for cid in ids if cid.startswith(prefix)]
