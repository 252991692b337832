"""Container resource limits in Docker's names and units, and their validation.

Validation happens here, before any cgroup exists, so that bad input gets
Docker's message and leaves nothing behind. What only the kernel can judge
(a limit below current usage, a quota above the parent's) is refused later by
the manager, also as InvalidParameter.
"""

from __future__ import annotations

from typing import Any
from dataclasses import dataclass, fields

from coracle import rootless
from coracle.cgroups import delegation, host
from coracle.errors import InvalidParameter

MIN_MEMORY = 6 * 1024 * 1024  # Docker's floor: below this a container cannot even start
DEFAULT_CPU_PERIOD = 100_000  # µs; --cpus is expressed as quota over this period
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262_144

# HostConfig JSON key -> field name
_HOST_CONFIG_KEYS = {
    "Memory": "memory",
    "MemorySwap": "memory_swap",
    "MemoryReservation": "memory_reservation",
    "NanoCpus": "nano_cpus",
    "CpuShares": "cpu_shares",
    "CpuPeriod": "cpu_period",
    "CpuQuota": "cpu_quota",
    "CpusetCpus": "cpuset_cpus",
    "CpusetMems": "cpuset_mems",
    "PidsLimit": "pids_limit",
    "BlkioWeight": "blkio_weight",
    "OomKillDisable": "oom_kill_disable",
    "MemorySwappiness": "memory_swappiness",
}
# field name -> the docker flag that sets it
_FLAGS = {
    "memory": "--memory", "memory_swap": "--memory-swap", "memory_reservation": "--memory-reservation",
    "nano_cpus": "--cpus", "cpu_shares": "--cpu-shares", "cpu_period": "--cpu-period", "cpu_quota": "--cpu-quota",
    "cpuset_cpus": "--cpuset-cpus", "cpuset_mems": "--cpuset-mems", "pids_limit": "--pids-limit",
    "blkio_weight": "--blkio-weight", "oom_kill_disable": "--oom-kill-disable",
    "memory_swappiness": "--memory-swappiness",
}
# field name -> the cgroup v2 controller its limit is written to
_CONTROLLERS = {
    "memory": "memory", "memory_swap": "memory", "memory_reservation": "memory", "oom_kill_disable": "memory",
    "memory_swappiness": "memory", "nano_cpus": "cpu", "cpu_shares": "cpu", "cpu_period": "cpu", "cpu_quota": "cpu",
    "cpuset_cpus": "cpuset", "cpuset_mems": "cpuset", "pids_limit": "pids", "blkio_weight": "io",
}


@dataclass
class Resources:
    """Limits for one container. Zero/empty means "not asked for".

    On a fresh cgroup (Manager.set) "not asked for" is the same as unlimited.
    On a live update (Manager.update) it means "leave as it is", and -1
    (memory_swap, cpu_quota, pids_limit) explicitly removes a limit, as with
    `docker update`.
    """

    memory: int = 0  # bytes
    memory_swap: int = 0  # bytes of memory+swap; -1 unlimited; 0 = twice memory
    memory_reservation: int = 0  # bytes (soft limit)
    nano_cpus: int = 0  # 1e9 = one CPU
    cpu_shares: int = 0
    cpu_period: int = 0  # µs
    cpu_quota: int = 0  # µs per period; -1 unlimited
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    pids_limit: int = 0  # 0 or -1 unlimited
    blkio_weight: int = 0  # 10..1000
    oom_kill_disable: bool = False
    memory_swappiness: int = -1  # 0..100; -1 = the kernel's (cgroup v1 only: v2 has no such knob)

    @classmethod
    def from_host_config(cls, hc: dict[str, Any]) -> Resources:
        """Build and validate from Docker's HostConfig JSON (null counts as unset)."""
        kinds = {f.name: type(f.default) for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, name in _HOST_CONFIG_KEYS.items():
            value = hc.get(key)
            if value is None:
                continue
            if type(value) is not kinds[name]:
                raise InvalidParameter(f"invalid value {value!r} for {key}")
            values[name] = value
        r = cls(**values)
        r.validate()
        return r

    def cpu_limit(self) -> tuple[int, int]:
        """The CFS (quota, period) in µs this asks for; 0 where not asked for."""
        if self.nano_cpus:
            return self.nano_cpus * DEFAULT_CPU_PERIOD // 1_000_000_000, DEFAULT_CPU_PERIOD
        return self.cpu_quota, self.cpu_period

    def validate(self, update: bool = False) -> None:
        """Raise InvalidParameter with Docker's message for the first problem found.

        `update` relaxes the rules that relate fields, since a live update may
        name only one of them (e.g. --memory-swap alone).
        """
        if self.memory < 0:
            raise InvalidParameter("Memory limit cannot be negative")
        if 0 < self.memory < MIN_MEMORY:
            raise InvalidParameter("Minimum memory limit allowed is 6MB")
        if self.memory_swap < -1:
            raise InvalidParameter("Invalid memory swap limit: use -1 for unlimited swap")
        if self.memory_swap > 0 and self.memory == 0 and not update:
            raise InvalidParameter(
                "You should always set the Memory limit when using Memoryswap limit, see usage."
            )
        if self.memory_swap > 0 and self.memory_swap < self.memory:
            raise InvalidParameter(
                "Minimum memoryswap limit should be larger than memory limit, see usage."
            )
        if not -1 <= self.memory_swappiness <= 100:
            raise InvalidParameter(f"Invalid value: {self.memory_swappiness}, valid memory swappiness range is 0-100")
        if self.memory_reservation < 0 or 0 < self.memory_reservation < MIN_MEMORY:
            raise InvalidParameter("Minimum memory reservation allowed is 6MB")
        if self.memory and self.memory_reservation > self.memory:
            raise InvalidParameter(
                "Minimum memory limit can not be less than memory reservation limit, see usage."
            )
        self._validate_cpu()
        self.cpuset_cpus = self._validate_cpuset(self.cpuset_cpus, host.online_cpus_list(), "cpus", "CPUs")
        self.cpuset_mems = self._validate_cpuset(
            self.cpuset_mems, host.online_mems_list(), "mems", "memory nodes"
        )
        if self.blkio_weight and not 10 <= self.blkio_weight <= 1000:
            raise InvalidParameter("Range of blkio weight is from 10 to 1000")
        if rootless.active():
            self._validate_rootless()

    def _validate_rootless(self) -> None:
        """A rootless daemon limits only through the controllers delegated to its user."""
        asked = self._asked()
        d = delegation.current()
        if d is None and asked:
            raise InvalidParameter(
                f"resource limits ({', '.join(_FLAGS[n] for n in asked)}) cannot be applied: this daemon runs "
                f"rootless and no cgroup is delegated to its user (cgroup v1 host); run without them, or use a "
                f"cgroup v2 host")
        for name in asked:
            controller = _CONTROLLERS[name]
            if d is not None and controller not in d.controllers:
                raise InvalidParameter(
                    f"{_FLAGS[name]} cannot be applied: the requested cgroup controller `{controller}` is not "
                    f"available in this rootless daemon's delegated {d.describe()}; run without it, or delegate "
                    f"the controller (systemd: Delegate=yes on the user's service)")

    def _asked(self) -> list[str]:
        """The fields of the limits this asks for."""
        return [name for name in _FLAGS if getattr(self, name) not in (0, "", -1)]

    def _validate_cpu(self) -> None:
        if self.nano_cpus and self.cpu_period:
            raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
        if self.nano_cpus and self.cpu_quota:
            raise InvalidParameter("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
        ncpu = host.online_cpus()
        if self.nano_cpus and not 10_000_000 <= self.nano_cpus <= ncpu * 1_000_000_000:
            raise InvalidParameter(
                f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
            )
        if self.cpu_shares < 0:
            raise InvalidParameter("CPU shares cannot be negative")
        if self.cpu_period and not 1000 <= self.cpu_period <= 1_000_000:
            raise InvalidParameter(
                "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)"
            )
        if self.cpu_quota < -1 or 0 < self.cpu_quota < 1000:
            raise InvalidParameter("CPU cfs quota can not be less than 1ms (i.e. 1000)")

    @staticmethod
    def _validate_cpuset(value: str, available: str, flag: str, noun: str) -> str:
        value = value.strip()
        if not value:
            return ""
        try:
            wanted = host.parse_list(value)
        except ValueError:
            raise InvalidParameter(f"Invalid value {value} for cpuset {flag}") from None
        if not wanted <= host.parse_list(available):
            raise InvalidParameter(
                f"Requested {noun} are not available - requested {value}, available: {available}"
            )
        return value

    def cpu_weight(self) -> int:
        """cgroup v2 cpu.weight (1..10000) for Docker's cpu shares (2..262144)."""
        shares = min(max(self.cpu_shares, MIN_CPU_SHARES), MAX_CPU_SHARES)
        return 1 + ((shares - 2) * 9999) // 262142
