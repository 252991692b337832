"""A lost or damaged state database never costs a running container, its files or its logs.

Each test stops its own coracled, damages state.db the way an operator's bad day
would (deleted with its WAL, one record mangled, the file overwritten with
garbage), starts the daemon again and checks what a user sees: the same
containers running with the same PIDs, their logs, and a clear account of what
was repaired.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from harness import Daemon, unique

from test_live_restore import alive, inspect, run_detached
from test_repairs import fetch, wait_until_served


def lose_database(d: Daemon, snapshot_too: bool) -> None:
    for suffix in ("", "-wal", "-shm", ".bak" if snapshot_too else None):
        if suffix is not None:
            (d.data_root / f"state.db{suffix}").unlink(missing_ok=True)


def logs(d: Daemon, cid: str) -> str:
    status, body = d.api("GET", f"/containers/{cid}/logs?stdout=1&stderr=1")
    assert status == 200, body
    return str(body)


def names(d: Daemon) -> set[str]:
    return set(d.docker("ps", "-a", "--format", "{{.Names}}").stdout.split())


@pytest.mark.parametrize("snapshot_too", [True, False], ids=["no-snapshot-either", "snapshot-kept"])
def test_a_lost_database_costs_no_container(fresh_daemon: Daemon, snapshot_too: bool) -> None:
    d = fresh_daemon
    d.start()
    web = unique("web")
    cid = run_detached(d, "sh", "-c", "echo hello-before; sleep 300")
    assert d.api("POST", f"/containers/{cid}/rename?name={web}")[0] == 204
    stopped = run_detached(d, "sh", "-c", "echo done; exit 3")
    assert d.api("POST", f"/containers/{stopped}/wait")[1]["StatusCode"] == 3
    pid = inspect(d, cid)["State"]["Pid"]
    assert "hello-before" in logs(d, cid)
    served = d.docker("run", "-d", "-p", "18300:80", "busybox", "sh", "-c",
                      "echo served > /index.html; httpd -f -p 80 -h /").stdout.strip()
    address = inspect(d, served)["NetworkSettings"]["IPAddress"]
    wait_until_served(d, 18300)
    d.stop(signal.SIGKILL)
    lose_database(d, snapshot_too)
    d.start()
    assert alive(pid)
    assert fetch(d, 18300) == "served"  # its veth, address and published port were kept
    other = d.docker("run", "-d", "busybox", "sleep", "300").stdout.strip()
    assert inspect(d, other)["NetworkSettings"]["IPAddress"] not in ("", address)  # its address stays its own
    d.docker("rm", "-f", served, other)
    assert fetch(d, 18300) == ""
    state = inspect(d, web)["State"]
    assert state["Running"] and state["Pid"] == pid  # the same process, known by its name again
    assert "hello-before" in logs(d, cid)  # its log was kept
    assert inspect(d, stopped)["State"]["ExitCode"] == 3
    assert web in names(d)
    d.docker("stop", "-t", "1", web)
    assert not alive(pid)
    d.docker("rm", web, stopped)
    assert not (d.data_root / "containers" / cid).exists()


def test_containers_changed_after_the_snapshot_come_back_as_they_were(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()  # the snapshot is taken at every clean start
    gone = run_detached(d, "true")
    d.stop()
    d.start()
    assert (d.data_root / "state.db.bak").exists()
    d.docker("rm", "-f", gone)  # removed after the snapshot
    late = run_detached(d, "sleep", "300")  # created after the snapshot
    pid = inspect(d, late)["State"]["Pid"]
    d.stop(signal.SIGKILL)
    lose_database(d, snapshot_too=False)
    d.start()
    assert "restored the snapshot" in d.log.read_text()
    assert inspect(d, late)["State"]["Pid"] == pid and alive(pid)
    assert d.api("GET", f"/containers/{gone}/json")[0] == 404  # not resurrected by the older snapshot
    d.docker("rm", "-f", late)


def test_a_record_file_that_lags_behind_follows_the_live_process(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    cid = d.docker("create", "--network", "none", "busybox", "sleep", "300").stdout.strip()
    record_file = d.data_root / "containers" / cid / "config.json"
    created = record_file.read_bytes()  # as if every save after create had failed
    d.docker("start", cid)
    pid = inspect(d, cid)["State"]["Pid"]
    d.stop(signal.SIGKILL)
    record_file.write_bytes(created)
    lose_database(d, snapshot_too=True)
    d.start()
    state = inspect(d, cid)["State"]
    assert state["Running"] and state["Pid"] == pid
    d.docker("stop", "-t", "1", cid)  # and it can be managed
    assert not alive(pid)
    d.docker("rm", cid)


def set_record(d: Daemon, cid: str, body: str) -> None:
    db = sqlite3.connect(d.data_root / "state.db")
    with db:
        assert db.execute("UPDATE documents SET body = ? WHERE kind = 'container' AND id = ?", (body, cid)).rowcount
    db.close()


def test_a_damaged_record_is_quarantined_and_reported_never_fatal(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    healthy = run_detached(d, "sleep", "300")
    garbled = run_detached(d, "sleep", "300")
    keyless = run_detached(d, "sleep", "300")
    pids = {c: inspect(d, c)["State"]["Pid"] for c in (healthy, garbled, keyless)}
    d.stop()
    set_record(d, garbled, "{not json")
    record = json.loads((d.data_root / "containers" / keyless / "config.json").read_text())
    del record["State"]
    set_record(d, keyless, json.dumps(record))
    (d.data_root / "containers" / keyless / "config.json").unlink()  # nothing to rebuild this one from
    d.start()
    assert inspect(d, healthy)["State"]["Pid"] == pids[healthy]
    assert inspect(d, garbled)["State"]["Pid"] == pids[garbled]  # rebuilt from its config.json
    assert d.api("GET", f"/containers/{keyless}/json")[0] == 404
    assert all(alive(pid) for pid in pids.values())  # the unaccountable one is left running, not killed
    assert (d.data_root / "containers" / keyless).is_dir()  # and its directory is kept
    report = d.cli("system", "check", "--dry-run").stdout
    assert "quarantined: " in report and garbled in report and keyless in report and "State" in report
    assert "damaged" in d.log.read_text()
    os.kill(pids[keyless], signal.SIGKILL)
    d.docker("rm", "-f", healthy, garbled)


@pytest.mark.parametrize("snapshot", [True, False], ids=["with-snapshot", "without-snapshot"])
def test_a_garbage_database_file_is_set_aside_and_the_daemon_starts(fresh_daemon: Daemon, snapshot: bool) -> None:
    d = fresh_daemon
    d.start()
    cid = run_detached(d, "sh", "-c", "echo still-here; sleep 300")
    pid = inspect(d, cid)["State"]["Pid"]
    d.stop()
    if not snapshot:
        (d.data_root / "state.db.bak").unlink()
    assert not (d.data_root / "state.db-wal").exists()  # a clean stop leaves the whole state in the file
    (d.data_root / "state.db").write_bytes(os.urandom(64 << 10))
    d.start()
    text = d.log.read_text()
    assert "Traceback" not in text
    damaged = [line for line in text.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and str(d.data_root / "state.db") in damaged[0]
    assert list(Path(d.data_root).glob("state.db.damaged-*"))  # kept for a post-mortem, never deleted
    state = inspect(d, cid)["State"]
    assert state["Running"] and state["Pid"] == pid
    assert "still-here" in logs(d, cid)
    d.docker("rm", "-f", cid)
    assert not alive(pid)
