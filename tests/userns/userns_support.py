"""Remapped containers at the runtime level (helpers of the user namespace tests)."""

from __future__ import annotations

from typing import Any

from security_support import Containers

from coracle.runtime.spec import Spec

# Host ids of the container's root; an arbitrary range nobody on the host uses.
ROOT_ID = 362144
SIZE = 65536


class RemappedContainers(Containers):
    """Containers whose root is host uid/gid ROOT_ID (unless `userns=False`)."""

    def spec(self, args: list[str], host_config: dict[str, Any] | None = None, user: str = "",
             daemon_no_new_privs: bool = False) -> Spec:
        spec = super().spec(args, host_config, user, daemon_no_new_privs)
        spec.uid_map = [[0, ROOT_ID, SIZE]]
        spec.gid_map = [[0, ROOT_ID, SIZE]]
        return spec
