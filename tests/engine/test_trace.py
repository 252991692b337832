"""Start-latency tracing: with CORACLE_TRACE=1 the daemon says where a start spent its time."""

from __future__ import annotations

import re

from harness import Daemon


def test_a_traced_start_logs_each_phase(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start(env={"CORACLE_TRACE": "1"})
    cid = d.docker("run", "-d", "--network", "none", "busybox", "true").stdout.strip()
    d.docker("wait", cid)
    line = next(entry for entry in d.log.read_text().splitlines() if f"start {cid[:12]}:" in entry)
    phases = re.findall(r"(\w+) [\d.]+ ms", line)
    assert phases == ["spawn", "cgroup", "network", "files", "release", "save", "total"]
