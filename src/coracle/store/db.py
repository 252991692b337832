"""SQLite-backed state: JSON documents by kind and id, plus domain tables.

Why SQLite: one file, atomic transactions and crash safety (WAL) for free, and
the standard library carries it. Most objects (containers, networks, images)
are stored as JSON documents keyed by (kind, id); a module that needs real
constraints (IPAM leases must never be handed out twice) creates its own table
through `schema()` and relies on UNIQUE/PRIMARY KEY for the guarantee.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class Store:
    """A thread-safe handle on the daemon's state database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS documents ("
            " kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,"
            " PRIMARY KEY (kind, id))"
        )
        self._depth = 0

    def schema(self, ddl: str) -> None:
        """Create a module's own tables (idempotent DDL expected)."""
        with self._lock:
            self._db.executescript(ddl)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction; nests (inner blocks join the outer one)."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._db
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("COMMIT")

    def execute(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """Run one statement in its own transaction (or the caller's) and fetch rows."""
        with self.tx() as db:
            return db.execute(sql, params).fetchall()

    def put(self, kind: str, id_: str, body: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO documents(kind, id, body) VALUES (?, ?, ?)"
                " ON CONFLICT(kind, id) DO UPDATE SET body = excluded.body",
                (kind, id_, json.dumps(body, separators=(",", ":"))),
            )

    def get(self, kind: str, id_: str) -> dict[str, Any] | None:
        rows = self.execute("SELECT body FROM documents WHERE kind = ? AND id = ?", (kind, id_))
        return json.loads(rows[0][0]) if rows else None

    def all(self, kind: str) -> list[dict[str, Any]]:
        rows = self.execute("SELECT body FROM documents WHERE kind = ? ORDER BY rowid", (kind,))
        return [json.loads(r[0]) for r in rows]

    def delete(self, kind: str, id_: str) -> None:
        self.execute("DELETE FROM documents WHERE kind = ? AND id = ?", (kind, id_))

    def close(self) -> None:
        with self._lock:
            self._db.close()
