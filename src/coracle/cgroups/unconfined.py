"""No cgroup: what a rootless daemon's containers get where no cgroup is delegated to its user.

On cgroup v1 (and on v2 without a delegated subtree) an ordinary user can
write no cgroup file, so a rootless container lives in its daemon's cgroup,
as Podman's do there. Limits are refused when the container is created
(Resources.validate); what needs a cgroup of the container's own (pause,
stats) says so.
"""

from __future__ import annotations

from typing import Any

from coracle.cgroups.devices import DeviceRule
from coracle.cgroups.manager import Manager
from coracle.cgroups.resources import Resources
from coracle.errors import InvalidParameter

WHY = "rootless mode without a delegated cgroup v2 subtree (this host has cgroup v1)"


class Unconfined(Manager):
    """A container without a cgroup of its own: nothing to create, join, limit or remove."""

    oom_kill_disable_supported = False

    def dirs(self) -> list[str]:
        return []

    def create(self) -> None:
        pass

    def _file(self, controller: str, name: str, what: str) -> str:
        raise InvalidParameter(f"{what} cannot be set in {WHY}")

    def _write_memory(self, r: Resources, fresh: bool) -> None:
        pass

    def _write_cpu(self, r: Resources) -> None:
        pass

    def _write_io_weight(self, weight: int) -> None:
        pass

    def set_devices(self, rules: list[DeviceRule]) -> None:
        """Nothing to enforce: in the user namespace a container cannot create device nodes, and
        the host's nodes it is given stay guarded by their owners and modes on the host."""

    def stats(self) -> dict[str, Any]:
        return {}

    def oom_killed(self) -> bool:
        return False

    def freeze(self) -> None:
        raise InvalidParameter(f"pause needs the freezer cgroup, which is not available in {WHY}")

    def thaw(self) -> None:
        raise InvalidParameter(f"unpause needs the freezer cgroup, which is not available in {WHY}")
