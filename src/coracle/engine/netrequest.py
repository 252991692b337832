"""The one place where a container's record becomes what the network layer is asked.

Everything the network layer needs of a container (id, name, hostname, mode,
the networks and endpoint options asked for, published ports, DNS settings,
extra hosts, the namespace of its PID 1) is read here from the engine's
record, so the network layer never sees that record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coracle.network import ports
from coracle.network.driver import ContainerNetworkRequest, DnsOptions, EndpointOptions
from coracle.network.mode import NetworkMode

__all__ = ["network_request"]


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value or ())


def network_request(rec: Mapping[str, Any], pid: int = 0) -> ContainerNetworkRequest:
    """The request for a container record; `pid` (its held or running PID 1) when it has a namespace."""
    hc, config = rec.get("HostConfig") or {}, rec.get("Config") or {}
    wanted = (rec.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    connected = (rec.get("NetworkSettings") or {}).get("Networks") or {}
    return ContainerNetworkRequest(
        container_id=rec.get("Id") or "", name=(rec.get("Name") or "").lstrip("/"),
        hostname=config.get("Hostname") or "", domainname=config.get("Domainname") or "",
        mode=NetworkMode.parse(hc.get("NetworkMode")),
        endpoints=tuple(EndpointOptions.from_docker(ref, cfg) for ref, cfg in wanted.items()),
        connected=tuple(EndpointOptions.from_docker(ref, cfg) for ref, cfg in connected.items()),
        mac_address=config.get("MacAddress") or "",
        ports=tuple(ports.requests(hc.get("PortBindings"), config.get("ExposedPorts"),
                                   bool(hc.get("PublishAllPorts")))),
        exposed_ports=tuple(config.get("ExposedPorts") or {}),
        dns=DnsOptions(_strings(hc.get("Dns")), _strings(hc.get("DnsSearch")), _strings(hc.get("DnsOptions"))),
        extra_hosts=_strings(hc.get("ExtraHosts")),
        netns=f"/proc/{pid}/ns/net" if pid else "",
    )
