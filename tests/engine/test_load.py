"""200 containers created, started and removed by parallel API calls.

What a user would notice: a duplicate address, a failed start, a leaked veth or
cgroup, or a daemon that stops answering `ps` while the burst is going on.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import Daemon

N = 200


@pytest.mark.slow
def test_parallel_burst_has_no_duplicates_no_errors_no_leaks(daemon: Daemon) -> None:
    veths_before = daemon.netns_exec("ip", "-o", "link").stdout.count("veth")

    def up(i: int) -> tuple[str, str]:
        status, body = daemon.api("POST", f"/containers/create?name=load{i}",
                                  {"Image": "busybox", "Cmd": ["sleep", "300"]})
        assert status == 201, body
        cid = body["Id"]
        status, body = daemon.api("POST", f"/containers/{cid}/start")
        assert status == 204, body
        status, body = daemon.api("GET", f"/containers/{cid}/json")
        return cid, body["NetworkSettings"]["IPAddress"]

    ps_latencies: list[float] = []
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(up, i) for i in range(N)]
        while not all(f.done() for f in futures):
            t = time.monotonic()
            status, _ = daemon.api("GET", "/containers/json")
            assert status == 200
            ps_latencies.append(time.monotonic() - t)
            time.sleep(0.05)
        started = [f.result() for f in futures]

    addresses = [ip for _, ip in started]
    assert len(set(addresses)) == N and all(addresses)
    status, listed = daemon.api("GET", "/containers/json")
    assert len(listed) == N
    assert ps_latencies  # the daemon kept answering during the burst

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda c: daemon.api("DELETE", f"/containers/{c[0]}?force=1")[0], started))
    assert statuses == [204] * N
    assert daemon.netns_exec("ip", "-o", "link").stdout.count("veth") == veths_before
    left = Path("/sys/fs/cgroup/memory", daemon.cgroup_parent).glob("*/")
    assert not [d for d in left if not d.name.startswith("spare-")]  # the spare child's (cgroups/spare.py) only
    status, report = daemon.api("GET", "/coracle/check")
    assert status == 200
    assert not any(report[k] for k in ("containers", "directories", "cgroups", "processes"))
