"""Opening the state database when it may be damaged or gone.

The database is snapshotted to `state.db.bak` (SQLite's online backup) at every
clean start and periodically while it changes. When `state.db` is damaged (not
a database, failed integrity check), it is moved aside as
`state.db.damaged-<UTC time>` (with its WAL) and the snapshot is put in its
place; when it is missing while a snapshot exists, the snapshot is restored.
Either way the daemon says so in one log line and starts. Container records
newer than the snapshot are rebuilt from each container's `config.json`
afterwards (engine/check.py), so no running container is ever treated as
unknown because the database lost it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time

from coracle.store.db import DamagedStore, Store
from coracle.store.reserve import Reserve

log = logging.getLogger("coracle.store")

STATE = "state.db"
SNAPSHOT = STATE + ".bak"
RESERVE = "state.reserve"
WAL_FILES = ("-wal", "-shm")


def snapshot_path(data_root: str) -> str:
    return os.path.join(data_root, SNAPSHOT)


def _usable(path: str) -> bool:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            db.close()
    except sqlite3.Error:
        return False


def _snapshot_time(path: str) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.stat(path).st_mtime))


def _restore_snapshot(path: str, snapshot: str) -> bool:
    """Put a copy of a usable snapshot at `path`; False when there is none."""
    if not os.path.exists(snapshot) or not _usable(snapshot):
        return False
    tmp = path + ".restoring"
    shutil.copyfile(snapshot, tmp)
    os.replace(tmp, path)
    return True


def open_state(data_root: str, recover: bool = False) -> Store:
    """The daemon's store: damaged or missing files are replaced by the last snapshot.

    `recover` (coracled --recover-state) restores the snapshot even over a
    database that opens fine, for a state the operator knows to be wrong.
    """
    path = os.path.join(data_root, STATE)
    snapshot = snapshot_path(data_root)
    reserve = Reserve(os.path.join(data_root, RESERVE))
    os.makedirs(data_root, exist_ok=True)
    restored = None
    empty = os.path.exists(path) and os.path.getsize(path) == 0 and not os.path.exists(path + "-wal")
    if recover or empty or not os.path.exists(path):
        why = "was asked for (--recover-state)" if recover else "is empty" if empty else "is missing"
        if any(os.path.exists(path + suffix) for suffix in ("", *WAL_FILES)):
            # kept for inspection; and a WAL without its database must not be replayed into a new one
            _move_aside(path, "replaced" if recover or empty else "stale")
        if _restore_snapshot(path, snapshot):
            restored = snapshot
            log.warning("state database %s %s: restored the snapshot %s of %s", path, why, snapshot,
                        _snapshot_time(snapshot))
        elif recover:
            raise SystemExit(f"coracled: --recover-state: no usable snapshot at {snapshot}")
    try:
        store = Store(path, reserve)
    except DamagedStore as exc:
        aside = _move_aside(path, "damaged")
        if _restore_snapshot(path, snapshot):
            restored = snapshot
            log.error("state database %s is damaged (%s): moved to %s; restored the snapshot %s of %s",
                      path, exc, aside, snapshot, _snapshot_time(snapshot))
        else:
            log.error("state database %s is damaged (%s): moved to %s; no usable snapshot, starting empty "
                      "(containers are rebuilt from their directories)", path, exc, aside)
        store = Store(path, reserve)
    store.restored_from = restored
    reserve.refill()
    return store


def _move_aside(path: str, why: str) -> str:
    """Rename the database and its WAL out of the way (kept for inspection, never deleted)."""
    aside = f"{path}.{why}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    for suffix in ("", *WAL_FILES):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    return aside
