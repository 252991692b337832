"""cgroup v2: one unified hierarchy.

Controllers must be enabled top-down (each ancestor's cgroup.subtree_control)
before a cgroup gets their files; create() does that. There is no knob for
"never OOM-kill" in v2: like Docker, a request for it is dropped with a
warning (see `oom_kill_disable_supported`) rather than failing the container.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from coracle.cgroups import devices, cgroupfs, host
from coracle.cgroups.manager import Manager, wait_until
from coracle.cgroups.resources import Resources
from coracle.errors import InvalidParameter, SystemError_

log = logging.getLogger(__name__)

# The controllers a container's limits use; others (rdma, hugetlb, misc) are left off.
WANTED = ("cpu", "cpuset", "io", "memory", "pids")


class V2Manager(Manager):
    oom_kill_disable_supported = False

    def _path(self, name: str = "") -> str:
        return os.path.join(self.root, self.path, name)

    def dirs(self) -> list[str]:
        return [os.path.join(self.root, self.path)]

    def _controllers(self, directory: str) -> set[str]:
        try:
            return set(cgroupfs.read(os.path.join(directory, "cgroup.controllers")).split())
        except FileNotFoundError:
            return set()

    def create(self) -> None:
        """mkdir every missing level and enable the wanted controllers in each
        ancestor's subtree_control, so the container's cgroup gets their files."""
        here = self.root
        for part in self.path.split("/"):
            self._enable_subtree(here)
            here = os.path.join(here, part)
            os.makedirs(here, exist_ok=True)

    def _enable_subtree(self, directory: str) -> None:
        control = os.path.join(directory, "cgroup.subtree_control")
        enabled = set(cgroupfs.read(control).split())
        missing = [c for c in WANTED if c in self._controllers(directory) and c not in enabled]
        if not missing:
            return
        try:
            cgroupfs.write(control, " ".join(f"+{c}" for c in missing), "cgroup controllers")
        except (InvalidParameter, SystemError_):
            # One controller may be refused (e.g. cpu with realtime tasks); keep the others.
            # Limits needing a refused one fail later with a clear message.
            for c in missing:
                try:
                    cgroupfs.write(control, f"+{c}", f"cgroup controller {c}")
                except (InvalidParameter, SystemError_) as e:
                    log.warning("cannot enable the %s controller in %s: %s", c, directory, e)

    def _file(self, controller: str, name: str, what: str) -> str:
        if controller not in self._controllers(self._path()):
            raise InvalidParameter(
                f"{what} requested, but the {controller} cgroup controller is not available on this host"
            )
        return self._path(name)

    # -- limits -----------------------------------------------------------

    def _write_memory(self, r: Resources, fresh: bool) -> None:
        if r.oom_kill_disable:
            log.warning("cgroup v2 has no way to disable the OOM killer; OomKillDisable discarded")
        if r.memory_reservation:
            path = self._file("memory", "memory.low", "memory reservation")
            cgroupfs.write(path, r.memory_reservation, "memory reservation")
        if r.memory:
            cgroupfs.write(self._file("memory", "memory.max", "memory limit"), r.memory, "memory limit")
        # v2 limits swap alone, while Docker's --memory-swap counts memory+swap.
        if r.memory_swap == -1:
            swap: int | str | None = "max"
        elif r.memory_swap > 0:
            memory = r.memory or cgroupfs.read_int(self._file("memory", "memory.max", "memory swap limit"))
            if memory < 0:
                raise InvalidParameter(
                    "You should always set the Memory limit when using Memoryswap limit, see usage."
                )
            swap = r.memory_swap - memory
            if swap < 0:
                raise InvalidParameter(
                    "Minimum memoryswap limit should be larger than memory limit, see usage."
                )
        elif fresh and r.memory:
            swap = r.memory  # Docker's default: as much swap as memory
        else:
            swap = None
        if swap is None:
            return
        swap_file = self._path("memory.swap.max")
        if not os.path.exists(swap_file):
            if r.memory_swap > 0:
                raise InvalidParameter(
                    "memory swap limit requested, but this kernel has no swap accounting "
                    "(memory.swap.max is missing)"
                )
            return
        cgroupfs.write(swap_file, swap, "memory swap limit")

    def _write_cpu(self, r: Resources) -> None:
        if r.cpu_shares:
            cgroupfs.write(self._file("cpu", "cpu.weight", "cpu shares"), r.cpu_weight(), "cpu shares")
        quota, period = r.cpu_limit()
        if not quota and not period:
            return
        path = self._file("cpu", "cpu.max", "cpu quota")
        current_quota, _, current_period = cgroupfs.read(path).partition(" ")
        value = (
            "max" if quota == -1 else str(quota) if quota else current_quota,
            str(period) if period else current_period or "100000",
        )
        cgroupfs.write(path, " ".join(value), "cpu quota")

    def _write_io_weight(self, weight: int) -> None:
        """io.bfq.weight takes blkio's 10..1000 directly; io.weight is 1..10000."""
        generic = self._file("io", "io.weight", "blkio weight")  # also checks the io controller
        bfq = self._path("io.bfq.weight")
        if os.path.exists(bfq):
            cgroupfs.write(bfq, weight, "blkio weight")
        elif os.path.exists(generic):
            cgroupfs.write(generic, f"default {1 + (weight - 10) * 9999 // 990}", "blkio weight")
        else:
            raise InvalidParameter(
                "blkio weight requested, but this kernel offers neither io.weight nor io.bfq.weight"
            )

    def set_devices(self, rules: list[devices.DeviceRule]) -> None:
        """Allow exactly `rules` to the container's processes, through a BPF device filter."""
        devices.attach_v2(self._path(), rules)

    # -- observation ------------------------------------------------------

    def _keyed(self, name: str) -> dict[str, int]:
        try:
            return cgroupfs.read_keyed(self._path(name))
        except FileNotFoundError:
            return {}

    def _int(self, name: str, unlimited: int = -1, default: int = 0) -> int:
        try:
            return cgroupfs.read_int(self._path(name), unlimited)
        except FileNotFoundError:
            return default

    def oom_killed(self) -> bool:
        return self._keyed("memory.events").get("oom_kill", 0) > 0

    def stats(self) -> dict[str, Any]:
        machine = host.machine_memory()
        limit = self._int("memory.max", unlimited=machine, default=machine)
        memory = {
            "usage": self._int("memory.current"),
            "limit": min(limit, machine) if machine else limit,
            "stats": self._keyed("memory.stat"),
        }
        if os.path.exists(self._path("memory.peak")):
            memory["max_usage"] = self._int("memory.peak")
        cpu = self._keyed("cpu.stat")
        return {
            "memory_stats": memory,
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": cpu.get("usage_usec", 0) * 1000,
                    "percpu_usage": [],  # v2 has no per-CPU accounting
                    "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
                    "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
                },
                "system_cpu_usage": host.system_cpu_usage(),
                "online_cpus": host.online_cpus(),
                "throttling_data": {
                    "periods": cpu.get("nr_periods", 0),
                    "throttled_periods": cpu.get("nr_throttled", 0),
                    "throttled_time": cpu.get("throttled_usec", 0) * 1000,
                },
            },
            "pids_stats": {"current": self._int("pids.current"), "limit": max(self._int("pids.max"), 0)},
            "blkio_stats": self._io_stats(),
        }

    def _io_stats(self) -> dict[str, Any]:
        """io.stat lines ("8:0 rbytes=.. wbytes=.. rios=.. wios=..") in Docker's v2 shape."""
        service_bytes, serviced = [], []
        try:
            text = cgroupfs.read(self._path("io.stat"))
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            device, *pairs = line.split()
            major, _, minor = device.partition(":")
            values = dict(p.split("=", 1) for p in pairs if "=" in p)
            for op, b, n in (("read", "rbytes", "rios"), ("write", "wbytes", "wios")):
                base = {"major": int(major), "minor": int(minor), "op": op}
                service_bytes.append({**base, "value": int(values.get(b, 0))})
                serviced.append({**base, "value": int(values.get(n, 0))})
        return {"io_service_bytes_recursive": service_bytes, "io_serviced_recursive": serviced}

    # -- pause / signals --------------------------------------------------

    def _set_frozen(self, frozen: bool) -> None:
        control = self._path("cgroup.freeze")
        if not os.path.exists(control):
            raise SystemError_("pause needs cgroup.freeze (Linux 5.2 or later)")
        want = int(frozen)
        cgroupfs.write(control, want, "freezer state")
        wait_until(lambda: self._keyed("cgroup.events").get("frozen") == want,
                   "freeze" if frozen else "thaw")

    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def kill_all(self, sig: int) -> None:
        """cgroup.kill (5.14+) kills the whole subtree atomically, forks included."""
        kill_file = self._path("cgroup.kill")
        if sig == signal.SIGKILL and os.path.exists(kill_file):
            cgroupfs.write(kill_file, 1, "cgroup kill")
        else:
            super().kill_all(sig)
