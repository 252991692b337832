"""What `docker top` and `docker stats` read straight from /proc for a container."""

from __future__ import annotations

import os
import pwd
import time
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return float(line.split()[1])
    return 0.0


def processes(pids: list[int]) -> dict[str, Any]:
    """Docker's top answer for `ps -ef` columns: UID PID PPID C STIME TTY TIME CMD."""
    boot = _boot_time()
    rows = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue  # exited meanwhile
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        cpu = (int(fields[11]) + int(fields[12])) // TICKS
        started = time.strftime("%H:%M", time.localtime(boot + int(fields[19]) / TICKS))
        rows.append([user, str(pid), fields[1], "0", started, "?",
                     time.strftime("%H:%M:%S", time.gmtime(cpu)), cmd or f"[{fields[0]}]"])
    return {"Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], "Processes": rows}


def network_counters(pid: int) -> dict[str, dict[str, int]]:
    """Per-interface counters in the container's network namespace (Docker's stats "networks")."""
    out: dict[str, dict[str, int]] = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, data = line.partition(":")
        name = name.strip()
        if name == "lo":
            continue
        v = [int(x) for x in data.split()]
        out[name] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                     "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11]}
    return out
