"""cgroup v1: one hierarchy per controller (or per co-mounted group of them).

The hierarchies are found in /proc/self/mountinfo rather than assumed, so
co-mounted "cpu,cpuacct" and a missing controller are both handled: a limit
needing an absent controller is an error only when it is asked for.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from typing import Any

from coracle.cgroups import devices, cgroupfs, host, spare
from coracle.cgroups.manager import Manager, wait_until
from coracle.cgroups.resources import MAX_CPU_SHARES, MIN_CPU_SHARES, Resources
from coracle.errors import InvalidParameter, SystemError_


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def hierarchies(root: str = "/sys/fs/cgroup") -> dict[str, str]:
    """Controller (or "name=systemd") -> mount point, for v1 hierarchies mounted under root."""
    with open("/proc/self/mountinfo") as f:
        return _parse(f.read(), root)


def _parse(mountinfo: str, root: str) -> dict[str, str]:
    root = os.path.normpath(root)
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, superopts = right.split(" ", 2)
        if fstype != "cgroup":
            continue
        mountpoint = unescape(left.split(" ")[4])
        if os.path.dirname(mountpoint) != root:
            continue
        for opt in superopts.strip().split(","):
            if opt in ("rw", "ro") or ("=" in opt and not opt.startswith("name=")):
                continue
            if opt in ("xattr", "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods"):
                continue
            out.setdefault(opt, mountpoint)
    return out


class MountTable:
    """This process's mountinfo, read again only after the kernel says it changed.

    Why: every container start builds cgroup managers, and parsing mountinfo for
    each cost a millisecond per start. The kernel flags an open mountinfo file with
    POLLPRI once after any mount or unmount in its namespace, so a poll that
    returns nothing proves the cached text current. Tied to the process that read
    it: a forked child (which may enter another mount namespace) reads its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._file: Any = None
        self._poll = select.poll()
        self._text = ""
        self._parsed: dict[str, dict[str, str]] = {}

    def hierarchies(self, root: str = "/sys/fs/cgroup") -> dict[str, str]:
        with self._lock:
            if self._pid != os.getpid():
                # kept open: POLLPRI on it says the mount table changed
                self._pid, self._file, self._poll = os.getpid(), open("/proc/self/mountinfo"), select.poll()  # noqa: SIM115
                self._poll.register(self._file, select.POLLPRI)
                self._reread()
            elif self._poll.poll(0):
                self._reread()
            if root not in self._parsed:
                self._parsed[root] = _parse(self._text, root)
            return dict(self._parsed[root])

    def _reread(self) -> None:
        self._file.seek(0)
        self._text = self._file.read()
        self._parsed = {}


mount_table = MountTable()


class V1Manager(Manager):
    renames = True

    def __init__(self, path: str, root: str = "/sys/fs/cgroup") -> None:
        super().__init__(path, root)
        self._mounts = mount_table.hierarchies(root)

    def _dir(self, controller: str) -> str | None:
        mountpoint = self._mounts.get(controller)
        return os.path.join(mountpoint, self.path) if mountpoint else None

    def _file(self, controller: str, name: str, what: str) -> str:
        """The path of an interface file needed for an asked-for limit, or a clear error."""
        d = self._dir(controller)
        if d is None:
            raise InvalidParameter(
                f"{what} requested, but the {controller} cgroup controller is not mounted on this host"
            )
        return os.path.join(d, name)

    def dirs(self) -> list[str]:
        return [os.path.join(mp, self.path) for mp in dict.fromkeys(self._mounts.values())]

    def adopt(self, pid: int) -> bool:
        try:
            return spare.rename_into(self._mounts, self.path, pid)
        except OSError:  # refused (a leftover of this name?): some may be renamed; `apply` moves the rest
            return False

    def create(self) -> None:
        for mountpoint in dict.fromkeys(self._mounts.values()):
            os.makedirs(os.path.join(mountpoint, self.path), exist_ok=True)
        cpuset = self._mounts.get("cpuset")
        if cpuset:
            self._fill_cpuset(cpuset)

    def _fill_cpuset(self, mountpoint: str) -> None:
        """A new v1 cpuset starts with no CPUs and no memory nodes and refuses tasks;
        copy the parent's at every level that is still empty."""
        parent = mountpoint
        for part in self.path.split("/"):
            here = os.path.join(parent, part)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not cgroupfs.read(os.path.join(here, name)):
                    value = cgroupfs.read(os.path.join(parent, name))
                    cgroupfs.write(os.path.join(here, name), value, name)
            parent = here

    # -- limits -----------------------------------------------------------

    def _write_memory(self, r: Resources, fresh: bool) -> None:
        if r.memory_reservation:
            path = self._file("memory", "memory.soft_limit_in_bytes", "memory reservation")
            cgroupfs.write(path, r.memory_reservation, "memory reservation")
        if r.oom_kill_disable:
            cgroupfs.write(self._file("memory", "memory.oom_control", "oom kill disable"), 1, "oom kill disable")
        if r.memory_swappiness >= 0:
            path = self._file("memory", "memory.swappiness", "memory swappiness")
            cgroupfs.write(path, r.memory_swappiness, "memory swappiness")
        swap = r.memory_swap
        if fresh and r.memory and not swap:
            swap = 2 * r.memory  # Docker's default: as much swap as memory
        if not r.memory and not swap:
            return
        limit_file = self._file("memory", "memory.limit_in_bytes", "memory limit")
        memsw_file = os.path.join(os.path.dirname(limit_file), "memory.memsw.limit_in_bytes")
        if swap and not os.path.exists(memsw_file):
            if r.memory_swap > 0:
                raise InvalidParameter(
                    "memory swap limit requested, but this kernel has no swap accounting "
                    "(memory.memsw.limit_in_bytes is missing; boot with swapaccount=1)"
                )
            swap = 0  # no swap accounting: memory is limited without swap, as Docker does
        # The kernel keeps memory <= memory+swap at every instant, so the order matters.
        writes = []
        if r.memory:
            writes.append((limit_file, r.memory, "memory limit"))
        if swap:
            writes.append((memsw_file, swap, "memory swap limit"))
        if r.memory and os.path.exists(memsw_file):
            current_memsw = cgroupfs.read_int(memsw_file)
            if not swap and r.memory > current_memsw:
                raise InvalidParameter(
                    "Memory limit should be smaller than already set memoryswap limit, "
                    "update the memoryswap at the same time"
                )
            if swap and (r.memory > current_memsw):
                writes.reverse()
        for path, value, what in writes:
            try:
                cgroupfs.write(path, value, what)
            except InvalidParameter:
                usage_file = os.path.join(os.path.dirname(limit_file), "memory.usage_in_bytes")
                if path == limit_file and cgroupfs.read_int(usage_file) > r.memory:
                    raise InvalidParameter(
                        f"cannot set memory limit to {r.memory} bytes: the container already uses more"
                    ) from None
                raise

    def _write_cpu(self, r: Resources) -> None:
        if r.cpu_shares:
            shares = min(max(r.cpu_shares, MIN_CPU_SHARES), MAX_CPU_SHARES)
            cgroupfs.write(self._file("cpu", "cpu.shares", "cpu shares"), shares, "cpu shares")
        quota, period = r.cpu_limit()
        if period:
            cgroupfs.write(self._file("cpu", "cpu.cfs_period_us", "cpu period"), period, "cpu period")
        if quota:
            cgroupfs.write(self._file("cpu", "cpu.cfs_quota_us", "cpu quota"), quota, "cpu quota")

    def _write_io_weight(self, weight: int) -> None:
        """blkio.weight belongs to CFQ (gone since 5.0); BFQ offers blkio.bfq.weight."""
        d = os.path.dirname(self._file("blkio", "blkio.weight", "blkio weight"))
        for name in ("blkio.weight", "blkio.bfq.weight"):
            if os.path.exists(os.path.join(d, name)):
                cgroupfs.write(os.path.join(d, name), weight, "blkio weight")
                return
        raise InvalidParameter(
            "blkio weight requested, but this kernel offers no blkio weight "
            "(neither blkio.weight nor blkio.bfq.weight; the BFQ I/O scheduler is needed)"
        )

    def set_devices(self, rules: list[devices.DeviceRule]) -> None:
        """Allow exactly `rules` to the container's processes (all other devices denied)."""
        devices.write_v1(self._file("devices", "", "device access control"), rules)

    # -- observation ------------------------------------------------------

    def _read_keyed(self, controller: str, name: str) -> dict[str, int]:
        d = self._dir(controller)
        try:
            return cgroupfs.read_keyed(os.path.join(d, name)) if d else {}
        except FileNotFoundError:
            return {}

    def _read_int(self, controller: str, name: str, default: int = 0) -> int:
        d = self._dir(controller)
        try:
            return cgroupfs.read_int(os.path.join(d, name)) if d else default
        except FileNotFoundError:
            return default

    def oom_killed(self) -> bool:
        return self._read_keyed("memory", "memory.oom_control").get("oom_kill", 0) > 0

    def stats(self) -> dict[str, Any]:
        machine = host.machine_memory()
        limit = self._read_int("memory", "memory.limit_in_bytes", machine)
        memory = {
            "usage": self._read_int("memory", "memory.usage_in_bytes"),
            "max_usage": self._read_int("memory", "memory.max_usage_in_bytes"),
            "failcnt": self._read_int("memory", "memory.failcnt"),
            "limit": min(limit, machine) if machine else limit,
            "stats": self._read_keyed("memory", "memory.stat"),
        }
        acct = self._dir("cpuacct")
        percpu: list[int] = []
        if acct and os.path.exists(os.path.join(acct, "cpuacct.usage_percpu")):
            percpu = cgroupfs.read_ints(os.path.join(acct, "cpuacct.usage_percpu"))
        throttling = self._read_keyed("cpu", "cpu.stat")
        pids_limit = self._read_int("pids", "pids.max", -1)
        return {
            "memory_stats": memory,
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": self._read_int("cpuacct", "cpuacct.usage"),
                    "percpu_usage": percpu,
                    "usage_in_kernelmode": self._read_int("cpuacct", "cpuacct.usage_sys"),
                    "usage_in_usermode": self._read_int("cpuacct", "cpuacct.usage_user"),
                },
                "system_cpu_usage": host.system_cpu_usage(),
                "online_cpus": host.online_cpus(),
                "throttling_data": {
                    "periods": throttling.get("nr_periods", 0),
                    "throttled_periods": throttling.get("nr_throttled", 0),
                    "throttled_time": throttling.get("throttled_time", 0),
                },
            },
            "pids_stats": {
                "current": self._read_int("pids", "pids.current"),
                "limit": max(pids_limit, 0),
            },
            "blkio_stats": self._blkio_stats(),
        }

    def _blkio_stats(self) -> dict[str, Any]:
        """Per-device byte and operation counts from the throttle files, which are
        kept whatever I/O scheduler runs (the CFQ ones are gone from modern kernels)."""
        d = self._dir("blkio")
        out: dict[str, list[Any]] = {}
        for key, name in (
            ("io_service_bytes_recursive", "blkio.throttle.io_service_bytes_recursive"),
            ("io_serviced_recursive", "blkio.throttle.io_serviced_recursive"),
        ):
            entries = []
            try:
                text = cgroupfs.read(os.path.join(d, name)) if d else ""
            except FileNotFoundError:
                text = ""
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and ":" in parts[0]:
                    major, minor = parts[0].split(":")
                    entries.append(
                        {"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])}
                    )
            out[key] = entries
        return out

    # -- pause / signals --------------------------------------------------

    def _freezer_state(self) -> str:
        return cgroupfs.read(self._freezer_file())

    def _freezer_file(self) -> str:
        d = self._dir("freezer")
        if d is None:
            raise SystemError_("pause needs the freezer cgroup controller, which this host does not mount")
        return os.path.join(d, "freezer.state")

    def _set_freezer(self, state: str) -> None:
        path = self._freezer_file()
        cgroupfs.write(path, state, "freezer state")
        # FREEZING can linger when a task is busy in the kernel; writing again retries it.
        wait_until(lambda: cgroupfs.read(path) == state, state.lower(),
                   nudge=lambda: cgroupfs.write(path, state, "freezer state"))

    def freeze(self) -> None:
        self._set_freezer("FROZEN")

    def thaw(self) -> None:
        self._set_freezer("THAWED")

    def kill_all(self, sig: int) -> None:
        """SIGKILL is sent with the cgroup frozen, so a fork racing the kill cannot
        leave a survivor; frozen tasks only die once thawed, hence the thaw after."""
        if sig != signal.SIGKILL or "freezer" not in self._mounts:
            return super().kill_all(sig)
        with contextlib.suppress(SystemError_):  # a task stuck in the kernel, or the cgroup is gone: signal anyway
            self.freeze()
        try:
            super().kill_all(sig)
        finally:
            with contextlib.suppress(SystemError_):
                self.thaw()
