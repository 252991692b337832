"""The state store on a full disk, with a damaged record, and recovered from its snapshot."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
from pathlib import Path
from collections.abc import Iterator

import pytest

from coracle.store import Store, open_state, snapshot_path
from harness import fill_filesystem

pytestmark = pytest.mark.root  # small filesystems are tmpfs mounts


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs, made and removed here."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "coracle-small", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_state_changes_still_commit_when_the_disk_is_full(small_fs: Path) -> None:
    store = open_state(str(small_fs))
    assert (small_fs / "state.reserve").exists()
    store.put("container", "a", {"State": "running"})
    fill_filesystem(small_fs / "filler")
    for i in range(200):  # a stop, an exit, a removal ... each needs room in the WAL
        store.put("container", "a", {"State": "exited", "pad": "x" * 2000, "i": i})
    store.delete("container", "a")
    assert store.get("container", "a") is None
    assert not (small_fs / "state.reserve").exists()  # it was spent on exactly this
    for i in range(200):  # with the reserve spent, the log's own space is reused
        store.put("container", "b", {"State": "exited", "pad": "y" * 2000, "i": i})
    assert store.get("container", "b")["i"] == 199  # type: ignore[index]  # stored above
    (small_fs / "filler").unlink()
    assert store.reserve is not None and store.reserve.refill()  # and is made again once there is room
    store.close()


def test_with_no_reserve_left_the_log_reuses_its_own_space(small_fs: Path) -> None:
    store = Store(small_fs / "state.db")  # no reserve at all: spent, or never made
    store.put("container", "a", {"State": "running"})
    store.close()  # the record is in the database file, as in a daemon that ran for a while
    store = Store(small_fs / "state.db")
    for i in range(100):  # ... and whose log has grown
        store.put("container", "a", {"State": "running", "i": i})
    fill_filesystem(small_fs / "filler")
    for i in range(300):
        store.put("container", "a", {"State": "exited", "i": i})
    assert store.get("container", "a") == {"State": "exited", "i": 299}
    store.close()


def test_a_record_that_does_not_decode_is_quarantined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "state.db")
    store.validate("container", lambda doc: doc["State"])
    store.put("container", "good", {"State": {}})
    store.put("container", "keyless", {"Name": "x"})
    store.execute("INSERT INTO documents(kind, id, body) VALUES ('container', 'garbled', '{oops')")
    with caplog.at_level(logging.ERROR):
        assert [d for d in store.all("container")] == [{"State": {}}]
    assert {q["id"] for q in store.quarantined()} == {"keyless", "garbled"}
    assert store.get("container", "garbled") is None
    assert "garbled" in caplog.text and "quarantined" in caplog.text


def test_recover_state_replaces_a_wrong_database_with_its_snapshot(tmp_path: Path) -> None:
    store = open_state(str(tmp_path))
    store.put("network", "n1", {"Name": "kept"})
    store.snapshot(snapshot_path(str(tmp_path)))
    store.delete("network", "n1")  # the state the operator wants to undo
    store.close()
    store = open_state(str(tmp_path), recover=True)
    assert store.get("network", "n1") == {"Name": "kept"}
    assert store.restored_from == snapshot_path(str(tmp_path))
    assert list(tmp_path.glob("state.db.replaced-*"))  # the replaced file is kept, not deleted
    store.close()


def test_a_database_file_that_is_not_one_is_replaced_by_the_snapshot(tmp_path: Path) -> None:
    store = open_state(str(tmp_path))
    store.put("network", "n1", {"Name": "kept"})
    store.snapshot(snapshot_path(str(tmp_path)))
    store.close()
    (tmp_path / "state.db").write_bytes(os.urandom(8192))
    store = open_state(str(tmp_path))
    assert store.get("network", "n1") == {"Name": "kept"}
    store.close()
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(next(tmp_path.glob("state.db.damaged-*"))).execute("SELECT 1 FROM documents").fetchall()
