"""1000 containers run and removed: nothing accumulates in coracle's own processes.

What a user would notice on a long-lived host: a daemon whose memory only
grows, a monitor or keeper that keeps zombies or descriptors of containers
long gone, and, at the end, no more descriptors to start a container with.
"""

from __future__ import annotations

import os
import resource
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from coracle.runtime.client import MonitorClient
from harness import Daemon

CYCLES = int(os.environ.get("SOAK_CYCLES", 1000))
WARMUP = 100  # the first containers fill the interpreter's caches and pools: measured after them
BATCH = 8


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[str]:
    """Child processes of pid (zombies included) as 'pid state' strings."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(f"{entry} {stat[0]}")
    return out


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files limit")


def cycle(d: Daemon, i: int) -> None:
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["echo", f"run-{i}"],
                                                          "HostConfig": {"NetworkMode": "none"}})
    assert status == 201, body
    cid = body["Id"]
    assert d.api("POST", f"/containers/{cid}/start")[0] == 204
    status, body = d.api("POST", f"/containers/{cid}/wait")
    assert status == 200 and body["StatusCode"] == 0, body
    assert d.api("DELETE", f"/containers/{cid}")[0] == 204


@pytest.mark.slow
def test_a_thousand_containers_leave_no_growth_behind(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # as a service manager starts it
    try:
        d.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    daemon, monitor, keeper = d.proc.pid, d.monitor_pid(), d.keeper_pid()  # type: ignore[union-attr]  # started
    assert monitor and keeper
    for pid in (daemon, monitor, keeper):  # raised to the hard limit, never above
        assert soft_nofile(pid) == hard
    with ThreadPoolExecutor(BATCH) as pool:
        list(pool.map(lambda i: cycle(d, i), range(WARMUP)))
        before = {"rss": rss_kib(daemon), "monitor fds": fds(monitor), "keeper fds": fds(keeper)}
        list(pool.map(lambda i: cycle(d, i), range(WARMUP, CYCLES)))
    after = {"rss": rss_kib(daemon), "monitor fds": fds(monitor), "keeper fds": fds(keeper)}
    assert after["rss"] <= before["rss"] * 1.10, (before, after)
    assert after["monitor fds"] <= before["monitor fds"], (before, after)
    assert after["keeper fds"] <= before["keeper fds"], (before, after)
    print(f"after {CYCLES} containers: {before} -> {after}")
    spare = (MonitorClient(str(d.exec_root)).ping() or {})["spare"]  # forked ahead of the next start
    assert children(monitor) == [f"{spare} S"], children(monitor)  # no zombie or stray forking child
    assert [c.split()[0] for c in children(keeper)] == [str(monitor)], children(keeper)
    assert d.api("GET", "/containers/json?all=1")[1] == []
    assert os.listdir(d.exec_root / "monitor" / "exits") == []
