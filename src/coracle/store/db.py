"""SQLite-backed state: JSON documents by kind and id, plus domain tables.

Why SQLite: one file, atomic transactions and crash safety (WAL) for free, and
the standard library carries it. Most objects (containers, networks, images)
are stored as JSON documents keyed by (kind, id); a module that needs real
constraints (IPAM leases must never be handed out twice) creates its own table
through `schema()` and relies on UNIQUE/PRIMARY KEY for the guarantee.

Damage never stops the daemon: a document that does not decode, or that its
kind's validator rejects, is moved to the `quarantine` table (reported by
`coracle system check`) and the others are served as usual. A write that hits
a full disk (SQLITE_FULL) frees the space reserve (see reserve.py), or once that
is spent restarts the WAL to reuse its space, and is tried again: stop, kill, rm
and exits keep being recorded when something filled the disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

from coracle.store.reserve import Reserve

log = logging.getLogger("coracle.store")

Validator = Callable[[dict[str, Any]], None]


class DamagedStore(Exception):
    """The database file is not a usable SQLite database (see recovery.py)."""


def is_full(exc: BaseException) -> bool:
    """SQLITE_FULL: "database or disk is full"."""
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_FULL


class Reader:
    """A read-only view of the state database for another process than the daemon's (the API's front).

    In WAL mode a reader sees the last committed state and neither waits for
    the daemon's writers nor makes them wait; the daemon answers a write only
    after its commit, so whatever a client changed is seen by its next read.
    A reader never quarantines or repairs anything: that is the daemon's.
    """

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)

    def version(self) -> int:
        """A number that moves whenever another connection commits: nothing changed while it stays."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def documents(self, kind: str) -> list[tuple[str, str]]:
        """(id, JSON body) of every document of `kind`, in the order they were first stored."""
        return self._db.execute("SELECT id, body FROM documents WHERE kind = ? ORDER BY rowid", (kind,)).fetchall()

    def close(self) -> None:
        self._db.close()


class Store:
    """A thread-safe handle on the daemon's state database."""

    def __init__(self, path: str | Path, reserve: Reserve | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reserve = reserve
        self._lock = threading.RLock()
        self._validators: dict[str, Validator] = {}
        self._depth = 0
        self.full_since: float | None = None  # a write failed for want of space and was not retried since
        self.restored_from: str | None = None  # the snapshot this database was restored from at start-up
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            verdict = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise DamagedStore(f"integrity check failed: {verdict}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(
                "CREATE TABLE IF NOT EXISTS documents ("
                " kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id));"
                "CREATE TABLE IF NOT EXISTS quarantine ("
                " kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL,"
                " at TEXT NOT NULL, reported INTEGER NOT NULL DEFAULT 0)"
            )
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "_db"):
                self._db.close()
            if isinstance(exc, sqlite3.OperationalError) and not is_full(exc):
                raise  # permissions, a locked file: not damage, nothing to recover
            raise DamagedStore(str(exc)) from None
        except DamagedStore:
            self._db.close()
            raise
        self._snapshot_changes = -1

    def schema(self, ddl: str) -> None:
        """Create a module's own tables (idempotent DDL expected)."""
        with self._lock:
            self._db.executescript(ddl)

    def validate(self, kind: str, validator: Validator) -> None:
        """Check every document of `kind` as it is read; one that fails is quarantined, not served."""
        self._validators[kind] = validator

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
                if self._depth == 0 and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            else:
                self._depth -= 1
                if self._depth == 0:
                    try:
                        self._db.execute("COMMIT")
                    except sqlite3.Error:
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
                        raise

    def _write(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """One statement; on a full disk, make room and try again (outside a caller's transaction).

        Room comes from the space reserve while it lasts, then from the WAL's own
        space: a checkpoint that restarts the log lets the next writes reuse it.
        """
        for attempt in range(3):
            try:
                with self.tx() as db:
                    return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not is_full(exc):
                    raise
                self.full_since = self.full_since or time.monotonic()
                with self._lock:
                    if self._depth > 0 or not self._make_room(attempt):
                        raise
        raise AssertionError("unreachable")

    def _make_room(self, attempt: int) -> bool:
        if attempt == 0 and self.reserve is not None and self.reserve.release():
            log.warning("the data root %s is full: released the space reserve so that state can be saved",
                        self.path.parent)
            return True
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            return attempt < 2 and not busy
        except sqlite3.OperationalError:
            return False

    def execute(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """Run one statement in its own transaction (or the caller's) and fetch rows."""
        return self._write(sql, params)

    def put(self, kind: str, id_: str, body: dict[str, Any]) -> None:
        self.put_encoded(kind, id_, json.dumps(body, separators=(",", ":")))

    def put_encoded(self, kind: str, id_: str, text: str) -> None:
        """A document already encoded as JSON text (its owner encodes once for every copy it writes)."""
        self._write(
            "INSERT INTO documents(kind, id, body) VALUES (?, ?, ?)"
            " ON CONFLICT(kind, id) DO UPDATE SET body = excluded.body",
            (kind, id_, text),
        )

    def get(self, kind: str, id_: str) -> dict[str, Any] | None:
        rows = self.execute("SELECT body FROM documents WHERE kind = ? AND id = ?", (kind, id_))
        return self._decode(kind, id_, rows[0][0]) if rows else None

    def all(self, kind: str) -> list[dict[str, Any]]:
        rows = self.execute("SELECT id, body FROM documents WHERE kind = ? ORDER BY rowid", (kind,))
        docs = (self._decode(kind, id_, body) for id_, body in rows)
        return [d for d in docs if d is not None]

    def delete(self, kind: str, id_: str) -> None:
        self.execute("DELETE FROM documents WHERE kind = ? AND id = ?", (kind, id_))

    # ----- damage ----------------------------------------------------------------

    def _decode(self, kind: str, id_: str, body: str) -> dict[str, Any] | None:
        """The document, or None after moving it to quarantine because it is unreadable."""
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            validator = self._validators.get(kind)
            if validator:
                validator(doc)
            return doc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        log.error("%s record %s is damaged (%s): quarantined; `coracle system check` reports it", kind, id_, reason)
        try:
            with self.tx() as db:
                db.execute("INSERT INTO quarantine(kind, id, body, reason, at) VALUES (?, ?, ?, ?, ?)",
                           (kind, id_, body, reason, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
                db.execute("DELETE FROM documents WHERE kind = ? AND id = ?", (kind, id_))
        except sqlite3.Error as exc:
            log.error("cannot quarantine %s record %s: %s", kind, id_, exc)
        return None

    def quarantined(self, unreported_only: bool = False) -> list[dict[str, str]]:
        """Documents set aside as damaged: kind, id, reason, when (their bodies stay in the table)."""
        sql = "SELECT rowid, kind, id, reason, at FROM quarantine"
        rows = self.execute(sql + (" WHERE reported = 0" if unreported_only else "") + " ORDER BY rowid")
        return [{"kind": k, "id": i, "reason": r, "at": at, "row": str(rowid)} for rowid, k, i, r, at in rows]

    def mark_reported(self, rows: list[str]) -> None:
        with self.tx() as db:
            db.executemany("UPDATE quarantine SET reported = 1 WHERE rowid = ?", [(int(r),) for r in rows])

    # ----- snapshots -------------------------------------------------------------

    def changed_since_snapshot(self) -> bool:
        with self._lock:
            return self._db.total_changes != self._snapshot_changes

    def snapshot(self, dest: str | Path) -> None:
        """A consistent copy of the whole database (SQLite's online backup), replaced atomically.

        The snapshot is what recovery.py falls back to when this file is damaged or lost.
        """
        tmp = f"{dest}.tmp"
        with self._lock:
            changes = self._db.total_changes
        try:
            # A connection of its own: a WAL reader sees one consistent state and never blocks the writers.
            source, target = sqlite3.connect(self.path), sqlite3.connect(tmp)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
            finally:
                source.close()
                target.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            for leftover in (tmp, tmp + "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)  # a half-written copy must not hold space on a full disk
            raise
        self._snapshot_changes = changes

    def close(self) -> None:
        with self._lock:
            self._db.close()
