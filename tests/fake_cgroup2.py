"""A MOCK cgroup2 tree for tests: this machine's cgroup2 has no controllers.

`FakeCgroup2` lays out, in a temporary directory, the interface files the
kernel shows in a cgroup2 mount; nothing written there is enforced.
"""

from __future__ import annotations

from pathlib import Path

ALL = "cpuset cpu io memory hugetlb pids rdma misc"


class FakeCgroup2:
    """A cgroup2 tree on tmpfs (a mock: nothing here is enforced)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mkcg(root, ALL)

    def mkcg(self, d: Path, controllers: str, extra: dict[str, str] | None = None) -> Path:
        """What the kernel shows in a new cgroup whose parent enabled `controllers`."""
        d.mkdir(parents=True, exist_ok=True)
        names = set(controllers.split())
        content = {
            "cgroup.controllers": controllers, "cgroup.subtree_control": "", "cgroup.procs": "",
            "cgroup.freeze": "0", "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": "",
        }
        if "memory" in names:
            content.update({
                "memory.max": "max", "memory.low": "0", "memory.swap.max": "max", "memory.current": "0",
                "memory.peak": "0", "memory.stat": "anon 0\nfile 0\n",
                "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            })
        if "cpu" in names:
            content.update({"cpu.max": "max 100000", "cpu.weight": "100",
                            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"})
        if "cpuset" in names:
            content.update({"cpuset.cpus": "", "cpuset.mems": ""})
        if "pids" in names:
            content.update({"pids.max": "max", "pids.current": "0"})
        if "io" in names:
            content.update({"io.weight": "default 100", "io.stat": ""})
        content.update(extra or {})
        for name, text in content.items():
            if not (d / name).exists():
                (d / name).write_text(text)
        return d
