"""A container's network mode (HostConfig.NetworkMode), parsed once.

Docker's values: "" and "default" (both mean the default bridge), "bridge",
"host", "none", "container:<name or id>", or the name or id of a user-defined
network. Every decision that depends on the mode asks this value instead of
comparing strings, so "default" is turned into "bridge" in exactly one place
(`parse`). Modelled on moby's `container.NetworkMode` (hostconfig_unix.go).
"""

from __future__ import annotations

from dataclasses import dataclass

from coracle.errors import InvalidParameter

__all__ = ["NetworkMode"]

CONTAINER_PREFIX = "container:"
BUILTIN_MODES = ("bridge", "host", "none")


@dataclass(frozen=True)
class NetworkMode:
    """A parsed network mode; `str()` gives the value stored in HostConfig.NetworkMode."""

    value: str

    @classmethod
    def parse(cls, raw: str | None) -> NetworkMode:
        """From HostConfig.NetworkMode as a client sent it ("default" and "" become "bridge")."""
        if raw is not None and not isinstance(raw, str):
            raise InvalidParameter(f"invalid network mode {raw!r}: expected a string")
        text = (raw or "").strip()
        if text in ("", "default"):
            return cls("bridge")
        if text.startswith(CONTAINER_PREFIX) and not text[len(CONTAINER_PREFIX):]:
            raise InvalidParameter(f"invalid network mode {text!r}: container: needs a container name or id")
        return cls(text)

    @classmethod
    def of_container(cls, container_id: str) -> NetworkMode:
        """The mode that shares the network namespace of another container."""
        return cls(CONTAINER_PREFIX + container_id)

    def __str__(self) -> str:
        return self.value

    @property
    def is_bridge(self) -> bool:
        """The default bridge network (what "default" means)."""
        return self.value == "bridge"

    @property
    def is_host(self) -> bool:
        """The host's own network namespace: no endpoint, no files of the container's own addresses."""
        return self.value == "host"

    @property
    def is_none(self) -> bool:
        """A private namespace with loopback only."""
        return self.value == "none"

    @property
    def is_container(self) -> bool:
        """The network namespace of another container is joined."""
        return self.value.startswith(CONTAINER_PREFIX)

    @property
    def container(self) -> str:
        """The donor's name or id in container:<ref> mode, "" otherwise."""
        return self.value[len(CONTAINER_PREFIX):] if self.is_container else ""

    @property
    def is_user_defined(self) -> bool:
        """A network created with `network create` (given by name or id)."""
        return self.value not in BUILTIN_MODES and not self.is_container

    @property
    def is_private(self) -> bool:
        """The container has a network namespace of its own (bridge, none, user networks)."""
        return not self.is_host and not self.is_container

    @property
    def shares_namespace(self) -> bool:
        """Host or container mode: the namespace belongs to someone else, so no other network may be
        connected, no port published through us, no DNS settings of its own."""
        return self.is_host or self.is_container

    @property
    def has_endpoints(self) -> bool:
        """Bridge and user-defined networks: the container gets interfaces, addresses and routes."""
        return self.is_bridge or self.is_user_defined

    @property
    def name(self) -> str:
        """The network joined first: "bridge", "host", "none" or the user network's reference; "" for
        container mode (no network of its own)."""
        return "" if self.is_container else self.value
