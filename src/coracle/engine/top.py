"""What `docker top` and `docker stats` read straight from /proc for a container."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from typing import Any

from coracle.errors import SystemError_

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


def ps(pids: list[int], ps_args: str) -> dict[str, Any]:
    """`docker top CONTAINER ARGS`: the host's ps(1) with those arguments, rows of the container's processes.

    As Docker does: ps runs once for the whole host, and its PID column picks
    the container's rows (so any column set the user asks for works).
    """
    try:
        res = subprocess.run(["ps", *ps_args.split()], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemError_(f"Error running ps: {exc}") from None
    if res.returncode != 0:
        raise SystemError_(f"Error running ps: exit status {res.returncode}: {res.stderr.strip()}")
    lines = res.stdout.splitlines()
    titles = lines[0].split() if lines else []
    if "PID" not in titles:
        raise SystemError_("Couldn't find PID field in ps output")
    column, wanted = titles.index("PID"), {str(p) for p in pids}
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) > column and fields[column] in wanted:
            rows.append(fields)
    return {"Titles": titles, "Processes": rows}


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
