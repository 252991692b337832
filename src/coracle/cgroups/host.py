"""Facts about the host that limits are checked against and stats are scaled by."""

from __future__ import annotations

import os

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_list(text: str) -> set[int]:
    """Parse the kernel's list format ("0-2,5"); ValueError when malformed."""
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(text)
        a, b = int(lo), int(hi) if sep else int(lo)
        if a > b:
            raise ValueError(text)
        out.update(range(a, b + 1))
    return out


def _sysfs_list(path: str, default: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or default
    except OSError:
        return default


def online_cpus_list() -> str:
    """The CPUs a cpuset may name, as the kernel lists them ("0-1")."""
    return _sysfs_list("/sys/devices/system/cpu/online", f"0-{(os.cpu_count() or 1) - 1}")


def online_mems_list() -> str:
    """The memory nodes a cpuset may name; hosts without NUMA sysfs have node 0."""
    return _sysfs_list("/sys/devices/system/node/online", "0")


def online_cpus() -> int:
    return os.sysconf("SC_NPROCESSORS_ONLN")


def machine_memory() -> int:
    """Total RAM in bytes: Docker reports it as the limit of an unlimited container."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def system_cpu_usage() -> int:
    """Host CPU time in ns since boot, summed like Docker does (user..steal of /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:9]
    return sum(int(x) for x in fields) * 1_000_000_000 // _CLK_TCK
