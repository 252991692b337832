"""The daemon can stop, crash or die mid-operation without costing a container anything.

Each test gets its own coracled (fresh_daemon), kills or restarts it, and
checks what a user would see afterwards: same PIDs, working exec and stop,
exit codes recorded while the daemon was away, and nothing left half-made.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import Daemon


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def inspect(d: Daemon, ref: str) -> dict:
    status, body = d.api("GET", f"/containers/{ref}/json")
    assert status == 200, body
    return body


def run_detached(d: Daemon, *args: str, **host_config: object) -> str:
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": list(args),
                                                           "HostConfig": {"NetworkMode": "none", **host_config}})
    assert status == 201, body
    cid = body["Id"]
    status, body = d.api("POST", f"/containers/{cid}/start")
    assert status == 204, body
    return cid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_containers_survive_the_daemon(fresh_daemon: Daemon, sig: int) -> None:
    d = fresh_daemon
    d.start()
    cid = run_detached(d, "sleep", "300")
    pid = inspect(d, cid)["State"]["Pid"]
    d.stop(sig)
    assert alive(pid)
    d.start()
    state = inspect(d, cid)["State"]
    assert state["Running"] and state["Pid"] == pid
    status, body = d.api("POST", f"/containers/{cid}/exec", {"Cmd": ["true"]})
    assert status == 201
    status, _ = d.api("POST", f"/exec/{body['Id']}/start", {"Detach": True})
    assert status == 200
    status, _ = d.api("POST", f"/containers/{cid}/stop?t=1")
    assert status == 204
    assert not alive(pid)
    assert inspect(d, cid)["State"]["ExitCode"] == 137


def test_exit_while_daemon_is_down_is_recorded(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    cid = run_detached(d, "sh", "-c", "sleep 1; exit 7")
    d.stop(signal.SIGKILL)
    time.sleep(1.5)
    d.start()
    state = inspect(d, cid)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 7
    assert state["FinishedAt"] > state["StartedAt"]


def test_always_containers_come_back_after_a_reboot(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    always = run_detached(d, "sleep", "300", RestartPolicy={"Name": "always"})
    plain = run_detached(d, "sleep", "300")
    old_pid = inspect(d, always)["State"]["Pid"]
    # a "reboot": every process of ours dies at once
    d.stop(signal.SIGKILL)
    monitor = d.monitor_pid()
    assert monitor
    os.kill(monitor, signal.SIGKILL)
    for ref in (always, plain):
        with contextlib.suppress(ProcessLookupError):
            os.kill(inspect_pid_from_disk(d, ref), signal.SIGKILL)
    time.sleep(0.2)
    d.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not inspect(d, always)["State"]["Running"]:
        time.sleep(0.05)
    state = inspect(d, always)["State"]
    assert state["Running"] and state["Pid"] != old_pid
    assert not inspect(d, plain)["State"]["Running"]


def inspect_pid_from_disk(d: Daemon, cid: str) -> int:
    import json
    import sqlite3

    db = sqlite3.connect(d.data_root / "state.db")
    body = db.execute("SELECT body FROM documents WHERE kind='container' AND id=?", (cid,)).fetchone()[0]
    db.close()
    return json.loads(body)["State"]["Pid"]


def test_two_daemons_never_share_a_data_root(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    other = subprocess.run(
        ["nsenter", f"--net=/run/netns/{d.netns}", sys.executable, "-m", "coracle.daemon",
         "--data-root", str(d.data_root), "--exec-root", str(d.root / "exec2"), "-H", f"unix://{d.root}/other.sock"],
        capture_output=True, text=True, timeout=30)
    assert other.returncode != 0
    assert "in use by another daemon" in other.stderr


@pytest.mark.parametrize("point", ["start-after-cgroup", "start-after-network"])
def test_crash_during_start_leaves_a_consistent_world(fresh_daemon: Daemon, point: str) -> None:
    d = fresh_daemon
    d.start(env={"CORACLE_FAULT": point})
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["sleep", "300"]})
    cid = body["Id"]
    with contextlib.suppress(Exception):  # the daemon dies mid-request, as injected
        d.api("POST", f"/containers/{cid}/start")
    d.proc.wait(10)  # type: ignore[union-attr]  # the daemon was started above
    d.start()
    state = inspect(d, cid)["State"]
    assert not state["Running"]
    cgroups = [p for p in Path("/sys/fs/cgroup").glob(f"*/{d.cgroup_parent}/{cid}")]
    assert cgroups == []
    status, _procs = 200, None
    links = d.netns_exec("ip", "-o", "link").stdout
    assert "veth" not in links
    # and it can be started properly now
    status, body = d.api("POST", f"/containers/{cid}/start")
    assert status == 204, body
    assert inspect(d, cid)["State"]["Running"]


def test_crash_during_create_leaves_no_half_container(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start(env={"CORACLE_FAULT": "create-after-dirs"})
    with contextlib.suppress(Exception):
        d.api("POST", "/containers/create?name=half", {"Image": "busybox", "Cmd": ["true"]})
    d.proc.wait(10)  # type: ignore[union-attr]  # the daemon was started above
    d.start()
    status, _ = d.api("GET", "/containers/half/json")
    assert status == 404
    assert os.listdir(d.data_root / "containers") == []
    status, body = d.api("POST", "/containers/create?name=half", {"Image": "busybox", "Cmd": ["true"]})
    assert status == 201, body  # the name is free again


def test_crash_during_rm_finishes_the_removal(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start(env={"CORACLE_FAULT": "rm-before-cleanup"})
    cid = run_detached(d, "sleep", "300")
    with contextlib.suppress(Exception):
        d.api("DELETE", f"/containers/{cid}?force=1")
    d.proc.wait(10)  # type: ignore[union-attr]  # the daemon was started above
    d.start()
    status, _ = d.api("GET", f"/containers/{cid}/json")
    assert status == 404
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{d.cgroup_parent}/{cid}"))
    assert not (d.data_root / "containers" / cid).exists()


def test_rm_containers_left_behind_are_removed_when_the_daemon_starts(fresh_daemon: Daemon) -> None:
    """As Docker: a --rm container that is not running when the daemon starts is removed, whether
    the daemon died during its removal (the fault point) or it was created and never started."""
    d = fresh_daemon
    d.start(env={"CORACLE_FAULT": "rm-before-cleanup"})
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["true"],
                                                           "HostConfig": {"NetworkMode": "none"}})
    assert status == 201, body
    never_started = body["Id"]
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["true"],
                                                           "HostConfig": {"NetworkMode": "none", "AutoRemove": True}})
    assert status == 201, body
    created_rm = body["Id"]
    ran = run_detached(d, "true", AutoRemove=True)
    d.proc.wait(10)  # type: ignore[union-attr]  # the fault point ended the daemon during the removal
    d.start()
    for cid in (ran, created_rm):
        assert d.api("GET", f"/containers/{cid}/json")[0] == 404
        assert not (d.data_root / "containers" / cid).exists()
        assert not list(Path("/sys/fs/cgroup").glob(f"*/{d.cgroup_parent}/{cid}"))
    assert inspect(d, never_started)["State"]["Status"] == "created"  # without --rm it stays


def test_a_killed_monitor_is_replaced_and_its_containers_stay_manageable(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    cid = run_detached(d, "sleep", "300")
    pid = inspect(d, cid)["State"]["Pid"]
    old_monitor = d.monitor_pid()
    assert old_monitor is not None
    os.kill(old_monitor, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (d.monitor_pid() in (None, old_monitor)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.monitor_pid() not in (None, old_monitor)
    assert alive(pid) and inspect(d, cid)["State"]["Running"]  # the container did not notice
    status, _ = d.api("POST", f"/containers/{cid}/stop?t=1")
    assert status == 204
    state = inspect(d, cid)["State"]
    assert not state["Running"] and state["ExitCode"] == 137 and not alive(pid)
    assert d.api("DELETE", f"/containers/{cid}")[0] == 204
    fresh = run_detached(d, "sleep", "300")  # and the new monitor runs new containers
    assert inspect(d, fresh)["State"]["Running"]
