"""`coracle system check` repairs what was deleted behind the daemon's back.

A running container's cgroup, veth or directory is removed with host tools;
the dry run must name the damage, the repair must make the limits bite and the
packets flow again, and failed starts must leave nothing in the monitor.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from harness import Daemon

from test_live_restore import alive, inspect


def container_cgroups(d: Daemon, cid: str) -> list[Path]:
    """The container's cgroup directories, one per hierarchy (v1 hierarchies mounted twice counted once)."""
    found = {p.resolve(): p for p in Path("/sys/fs/cgroup").glob(f"*/{d.cgroup_parent}/{cid}")}
    return sorted(found.values())


def remove_cgroup(d: Daemon, cid: str) -> None:
    """What a careless admin does: move the processes to the parent, then rmdir the container's cgroup."""
    for directory in container_cgroups(d, cid):
        for pid in (directory / "cgroup.procs").read_text().split():
            (directory.parent / "cgroup.procs").write_text(pid)
        directory.rmdir()


def test_a_deleted_cgroup_is_recreated_and_the_limits_bite_again(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    client = d.sdk()
    ctr = client.containers.run("busybox", "sleep 300", detach=True, network_mode="none", mem_limit="16m",
                                memswap_limit="16m", pids_limit=12)
    cid = ctr.id
    assert cid is not None  # a container the daemon created has its id
    pid = ctr.attrs["State"]["Pid"] or inspect(d, cid)["State"]["Pid"]
    remove_cgroup(d, cid)
    assert container_cgroups(d, cid) == []
    assert "cgroup missing" in d.cli("system", "check", "--dry-run").stdout
    d.cli("system", "check")
    assert container_cgroups(d, cid)
    assert f"/{d.cgroup_parent}/{cid}" in Path(f"/proc/{pid}/cgroup").read_text()  # moved back in
    code, _ = ctr.exec_run(["sh", "-c", "x=a; while true; do x=$x$x$x$x; done"])
    assert code == 137  # the memory limit bites again
    ctr.exec_run(["sh", "-c", "for i in $(seq 40); do sleep 30 & done"])
    stats = ctr.stats(stream=False)
    assert isinstance(stats, dict)  # stream=False: one decoded sample
    assert stats["pids_stats"]["current"] <= 12  # and so does the pids limit
    assert alive(pid)
    assert "No inconsistencies" in d.cli("system", "check", "--dry-run").stdout
    ctr.remove(force=True)


def fetch(d: Daemon, port: int) -> str:
    return d.netns_exec("timeout", "3", "busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/",
                        check=False).stdout.strip()


def wait_until_served(d: Daemon, port: int) -> None:
    deadline = time.monotonic() + 30
    while fetch(d, port) != "served":
        assert time.monotonic() < deadline, "the server never answered"
        time.sleep(0.1)


def test_a_deleted_veth_is_replumbed_with_the_same_address_and_ports(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    port = 18200
    cid = d.docker("run", "-d", "-p", f"{port}:80", "busybox", "sh", "-c",
                   "echo served > /index.html; httpd -f -p 80 -h /").stdout.strip()
    before = inspect(d, cid)["NetworkSettings"]
    wait_until_served(d, port)
    links = json.loads(d.netns_exec("ip", "-j", "link", "show", "master", "coracle0").stdout)
    assert len(links) == 1
    d.netns_exec("ip", "link", "del", links[0]["ifname"])
    assert fetch(d, port) == ""  # cut off
    assert "veth" in d.cli("system", "check", "--dry-run").stdout
    d.cli("system", "check")
    assert fetch(d, port) == "served"  # the published port reaches it again
    after = inspect(d, cid)["NetworkSettings"]
    assert after["IPAddress"] == before["IPAddress"] and after["MacAddress"] == before["MacAddress"]
    pid = inspect(d, cid)["State"]["Pid"]
    inside = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "route"], capture_output=True,
                            text=True, check=True).stdout
    assert any(r["dst"] == "default" for r in json.loads(inside))  # and its default route is back
    d.docker("rm", "-f", cid)


def monitor_children_and_fds(d: Daemon) -> tuple[set[str], int]:
    pid = d.monitor_pid()
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= set((task / "children").read_text().split())
    return children, len(os.listdir(f"/proc/{pid}/fd"))


def test_a_deleted_directory_is_recreated_and_failed_starts_leak_nothing(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    ticking = d.docker("run", "-d", "--network", "none", "busybox", "sh", "-c",
                       "while true; do echo tick; sleep 0.1; done").stdout.strip()
    stopped = d.docker("create", "--network", "none", "busybox", "echo", "started").stdout.strip()
    shutil.rmtree(d.data_root / "containers" / ticking)
    shutil.rmtree(d.data_root / "containers" / stopped)
    before = monitor_children_and_fds(d)
    failures = [d.docker("start", stopped, check=False) for _ in range(3)]
    assert monitor_children_and_fds(d) == before  # no stray child, no descriptor kept
    assert all(res.returncode != 0 and "system check" in res.stderr for res in failures)  # and a way out
    report = d.cli("system", "check", "--dry-run").stdout
    assert "directory missing" in report and ticking in report
    d.cli("system", "check")
    directory = d.data_root / "containers" / ticking
    assert (directory / "config.json").exists() and (directory / "hosts").exists()
    log = directory / f"{ticking}-json.log"
    deadline = time.monotonic() + 30
    while not (log.exists() and "tick" in log.read_text()):  # the monitor writes the log there again
        assert time.monotonic() < deadline, "the log never came back"
        time.sleep(0.1)
    assert "tick" in d.docker("logs", ticking).stdout
    d.docker("start", "-a", stopped)
    assert "started" in d.docker("logs", stopped).stdout
    d.docker("rm", "-f", ticking, stopped)
