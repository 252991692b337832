"""The one place where a container's record becomes what the network layer is asked.

Everything the network layer needs of a container (id, name, hostname, mode,
the networks and endpoint options asked for, published ports, DNS settings,
extra hosts, the namespace of its PID 1) is read here from the engine's
record, so the network layer never sees that record.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from coracle.engine.container import Container
from coracle.network import ports
from coracle.network.driver import (
    Attachment,
    ContainerFiles,
    ContainerNetworkRequest,
    Disconnection,
    DnsOptions,
    EndpointOptions,
)

if TYPE_CHECKING:
    from coracle.network.manager import Adoption, Connection

__all__ = ["ContainerNetworks", "network_request"]


class ContainerNetworks(Protocol):
    """What the engine asks of the network layer (coracle.network.manager.NetworkManager), by request."""

    def validate(self, request: ContainerNetworkRequest) -> None: ...
    def attach(self, request: ContainerNetworkRequest) -> Attachment: ...
    def detach(self, container_id: str) -> None: ...
    def connect(self, request: ContainerNetworkRequest, network_ref: str, options: EndpointOptions
                ) -> Connection: ...
    def disconnect(self, request: ContainerNetworkRequest, network_ref: str, force: bool = False
                   ) -> Disconnection: ...
    def rename(self, request: ContainerNetworkRequest, old_name: str) -> dict[str, builtins.list[str]]: ...
    def files(self, request: ContainerNetworkRequest, settings: Mapping[str, Any] | None) -> ContainerFiles: ...

    # reconciliation (engine/check.py)
    def reconcile(self, live: dict[str, int], dry_run: bool = False) -> dict[str, builtins.list[Any]]: ...
    def adopt(self, request: ContainerNetworkRequest, settings: Mapping[str, Any], pid: int,
              dry_run: bool = False) -> Adoption: ...
    def replumb(self, cid: str, pid: int, dry_run: bool = False) -> builtins.list[str]: ...
    def prune_partial(self, cid: str, keep: set[str], dry_run: bool = False) -> builtins.list[str]: ...


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value or ())


def network_request(c: Container, pid: int = 0) -> ContainerNetworkRequest:
    """The request for a container; `pid` (its held or running PID 1) when it has a namespace."""
    hc, config = c.host_config.raw, c.config
    return ContainerNetworkRequest(
        container_id=c.id, name=c.short_name,
        hostname=config.get("Hostname") or "", domainname=config.get("Domainname") or "",
        mode=c.host_config.mode,
        endpoints=tuple(EndpointOptions.from_docker(ref, cfg) for ref, cfg in c.wanted_networks.items()),
        connected=tuple(attachment.options(ref) for ref, attachment in c.networks.items()),
        mac_address=config.get("MacAddress") or "",
        ports=tuple(ports.requests(hc.get("PortBindings"), config.get("ExposedPorts"),
                                   bool(hc.get("PublishAllPorts")))),
        exposed_ports=tuple(config.get("ExposedPorts") or {}),
        dns=DnsOptions(_strings(hc.get("Dns")), _strings(hc.get("DnsSearch")), _strings(hc.get("DnsOptions"))),
        extra_hosts=_strings(hc.get("ExtraHosts")),
        netns=f"/proc/{pid}/ns/net" if pid else "",
    )
