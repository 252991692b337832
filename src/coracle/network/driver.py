"""The typed contract between the engine and the network layer, and between the
network layer and its drivers.

Modelled on netavark's `src/network/types.rs` and moby's libnetwork drivers:

- the engine builds one `ContainerNetworkRequest` per container (in one
  function of its own) and hands it to the network manager; nothing below
  reads or changes the container's Docker JSON;
- the manager answers with an `Attachment`: Docker's NetworkSettings *and* the
  rendered /etc/hostname, /etc/hosts and /etc/resolv.conf, so a start needs no
  second round trip; `disconnect` answers with a `Disconnection` saying what
  changed, and the engine updates its own record;
- networks are `NetworkRecord`s (stored in Docker's inspect shape, see
  `document`), created from a `NetworkSpec`;
- a `NetworkDriver` (bridge, macvlan, ipvlan, overlay) owns only the kernel
  objects of its networks and endpoints; addresses, endpoint records,
  published ports, names and files are the manager's, the same for every driver.

All records are frozen: a change is a new value (`dataclasses.replace`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from coracle.errors import InvalidParameter
from coracle.network.mode import NetworkMode
from coracle.network.ports import PortRequest

__all__ = [
    "Attachment", "ContainerFiles", "ContainerNetworkRequest", "Disconnection", "DnsOptions", "Endpoint",
    "EndpointOptions", "NetworkDriver", "NetworkMode", "NetworkRecord", "NetworkSpec", "PortRequest", "Subnet",
    "SubnetRequest",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

OPT = "com.docker.network."


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(mapping or {})


# ----- networks ------------------------------------------------------------------


@dataclass(frozen=True)
class SubnetRequest:
    """One IPAM.Config entry as a client asked for it (`--subnet/--gateway/--ip-range/--aux-address`);
    empty strings mean "choose for me"."""

    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    aux_addresses: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> int:
        """4 or 6, from whichever address is given (4 when none is)."""
        return 6 if ":" in (self.subnet or self.gateway or self.ip_range) else 4

    @classmethod
    def from_docker(cls, config: Mapping[str, Any]) -> SubnetRequest:
        return cls(str(config.get("Subnet") or ""), str(config.get("Gateway") or ""),
                   str(config.get("IPRange") or ""),
                   {str(k): str(v) for k, v in (config.get("AuxiliaryAddresses") or {}).items()})


@dataclass(frozen=True)
class Subnet:
    """A network's subnet of one family, as chosen: gateway set, range and auxiliary addresses checked."""

    network: Network
    gateway: Address
    ip_range: Network | None = None
    aux_addresses: Mapping[str, Address] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.network.version

    @property
    def reserved(self) -> set[Address]:
        """Addresses never handed to a container: network, broadcast, gateway and auxiliary ones."""
        out: set[Address] = {self.network.network_address, self.gateway, *self.aux_addresses.values()}
        if self.network.version == 4:
            out.add(self.network.broadcast_address)
        return out

    def document(self) -> dict[str, Any]:
        """Docker's IPAM.Config entry (IPRange and AuxiliaryAddresses only when set, as Docker shows)."""
        out: dict[str, Any] = {"Subnet": str(self.network), "Gateway": str(self.gateway)}
        if self.ip_range is not None:
            out["IPRange"] = str(self.ip_range)
        if self.aux_addresses:
            out["AuxiliaryAddresses"] = {k: str(v) for k, v in self.aux_addresses.items()}
        return out

    @classmethod
    def from_document(cls, config: Mapping[str, Any]) -> Subnet:
        network = ipaddress.ip_network(str(config["Subnet"]), strict=False)
        return cls(network, ipaddress.ip_address(str(config["Gateway"])),
                   ipaddress.ip_network(str(config["IPRange"]), strict=False) if config.get("IPRange") else None,
                   {str(k): ipaddress.ip_address(str(v)) for k, v in (config.get("AuxiliaryAddresses") or {}).items()})


@dataclass(frozen=True)
class NetworkSpec:
    """What `network create` asks for, before any subnet is chosen."""

    name: str
    driver: str = "bridge"
    subnets: tuple[SubnetRequest, ...] = ()
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    options: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    ipam_driver: str = "default"
    ipam_options: Mapping[str, str] = field(default_factory=dict)

    def subnet(self, version: int) -> SubnetRequest | None:
        """The request for one family; more than one per family is refused."""
        found = [s for s in self.subnets if s.version == version]
        if len(found) > 1:
            raise InvalidParameter(f"only one IPv{version} subnet per network is supported")
        return found[0] if found else None


@dataclass(frozen=True)
class NetworkRecord:
    """A network as stored: Docker's inspect fields plus what the drivers need.

    `interface` is the host device the driver hangs endpoints on (the bridge, or
    the macvlan/ipvlan parent); `driver_state` is what a driver remembers about
    kernel objects it made (e.g. that it created the parent's VLAN sub-interface).
    """

    id: str
    name: str
    driver: str
    created: str
    subnets: tuple[Subnet, ...] = ()
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    builtin: bool = False
    scope: str = "local"
    interface: str = ""
    mtu: int = 1500
    icc: bool = True
    masquerade: bool = True
    options: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    ipam_options: Mapping[str, str] | None = None
    driver_state: Mapping[str, Any] = field(default_factory=dict)

    def subnet(self, version: int = 4) -> Subnet | None:
        return next((s for s in self.subnets if s.version == version), None)

    @property
    def subnet4(self) -> Subnet:
        """The IPv4 subnet every network with endpoints has."""
        found = self.subnet(4)
        if found is None:
            raise InvalidParameter(f"network {self.name} has no IPv4 subnet")
        return found

    @property
    def subnet6(self) -> Subnet | None:
        """The IPv6 subnet of a network created with EnableIPv6, None for the others."""
        return self.subnet(6) if self.enable_ipv6 else None

    @property
    def dns_enabled(self) -> bool:
        """User-defined networks get the embedded resolver and names; builtin ones do not (Docker)."""
        return not self.builtin

    def document(self) -> dict[str, Any]:
        """Docker's network inspect shape (without Containers) plus the private "Coracle" part."""
        return {
            "Name": self.name, "Id": self.id, "Created": self.created, "Scope": self.scope, "Driver": self.driver,
            "EnableIPv4": True, "EnableIPv6": self.enable_ipv6,
            "IPAM": {"Driver": "default", "Options": None if self.ipam_options is None else dict(self.ipam_options),
                     "Config": [s.document() for s in self.subnets]},
            "Internal": self.internal, "Attachable": self.attachable, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Options": dict(self.options),
            "Labels": dict(self.labels),
            "Coracle": {"Builtin": self.builtin, "Bridge": self.interface, "ICC": self.icc,
                        "Masquerade": self.masquerade, "MTU": self.mtu, **dict(self.driver_state)},
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> NetworkRecord:
        private = dict(doc.get("Coracle") or {})
        known = ("Builtin", "Bridge", "ICC", "Masquerade", "MTU")
        ipam = doc.get("IPAM") or {}
        return cls(
            id=doc["Id"], name=doc["Name"], driver=doc["Driver"], created=doc.get("Created", ""),
            subnets=tuple(Subnet.from_document(c) for c in ipam.get("Config") or [] if c.get("Subnet")),
            internal=bool(doc.get("Internal")), attachable=bool(doc.get("Attachable")),
            enable_ipv6=bool(doc.get("EnableIPv6")), builtin=bool(private.get("Builtin")),
            scope=doc.get("Scope") or "local", interface=private.get("Bridge") or "",
            mtu=int(private.get("MTU") or 1500), icc=bool(private.get("ICC", True)),
            masquerade=bool(private.get("Masquerade", True)), options=_frozen(doc.get("Options")),
            labels=_frozen(doc.get("Labels")), ipam_options=ipam.get("Options"),
            driver_state={k: v for k, v in private.items() if k not in known},
        )


# ----- the per-container request -------------------------------------------------------


@dataclass(frozen=True)
class EndpointOptions:
    """What a container asks of one network (Docker's EndpointSettings as a client sends it)."""

    network: str  # the network's name or id, as the client gave it
    aliases: tuple[str, ...] = ()
    ipam_config: Mapping[str, Any] | None = None  # IPv4Address / IPv6Address of --ip / --ip6
    mac_address: str = ""
    driver_opts: Mapping[str, str] = field(default_factory=dict)

    @property
    def ipv4_address(self) -> str:
        return str((self.ipam_config or {}).get("IPv4Address") or "")

    @property
    def ipv6_address(self) -> str:
        return str((self.ipam_config or {}).get("IPv6Address") or "")

    @property
    def empty(self) -> bool:
        """Nothing asked beyond membership (a network named by the mode alone)."""
        return not (self.aliases or self.ipam_config or self.mac_address or self.driver_opts)

    @classmethod
    def from_docker(cls, network: str, settings: Mapping[str, Any] | None) -> EndpointOptions:
        s = settings or {}
        return cls(network, tuple(s.get("Aliases") or ()), dict(s["IPAMConfig"]) if s.get("IPAMConfig") else None,
                   str(s.get("MacAddress") or ""), {str(k): str(v) for k, v in (s.get("DriverOpts") or {}).items()})


@dataclass(frozen=True)
class DnsOptions:
    """--dns, --dns-search, --dns-option."""

    servers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.servers or self.search or self.options)


@dataclass(frozen=True)
class ContainerNetworkRequest:
    """Everything the network layer needs to know about one container (netavark's NetworkOptions).

    `endpoints` are the networks asked for at create (NetworkingConfig), `connected`
    those the container record lists now (NetworkSettings.Networks: joined
    before, or connected while stopped), both in their order. `netns` is the
    path of the container's network namespace, "" when it is not running.
    """

    container_id: str
    name: str  # without the leading "/"
    hostname: str
    mode: NetworkMode
    domainname: str = ""
    endpoints: tuple[EndpointOptions, ...] = ()
    connected: tuple[EndpointOptions, ...] = ()
    mac_address: str = ""  # Config.MacAddress: the first network's, unless its options give one
    ports: tuple[PortRequest, ...] = ()
    exposed_ports: tuple[str, ...] = ()  # "80/tcp" keys: shown in NetworkSettings.Ports even unpublished
    dns: DnsOptions = DnsOptions()
    extra_hosts: tuple[str, ...] = ()
    netns: str = ""


# ----- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A container's membership of one network, with what the driver made for it."""

    id: str
    network_id: str
    network_name: str
    container_id: str
    container_name: str
    mac_address: str = ""
    ipv4: str = ""
    ipv4_prefixlen: int = 0
    gateway: str = ""
    ipv6: str = ""
    ipv6_prefixlen: int = 0
    ipv6_gateway: str = ""
    aliases: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ipam_config: Mapping[str, Any] | None = None
    driver_opts: Mapping[str, str] | None = None
    interface: str = ""  # the name inside the container (eth0, eth1...)
    host_interface: str = ""  # the host's end, for drivers that have one (the bridge's veth)
    # the container's namespace path while the manager knows it is alive (join, and leave of a running
    # container); never stored: a PID may name another process after a restart
    sandbox: str = field(default="", compare=False)

    def settings(self) -> dict[str, Any]:
        """Docker's EndpointSettings, as inspect shows them under NetworkSettings.Networks."""
        return {"IPAMConfig": dict(self.ipam_config) if self.ipam_config else None, "Links": None,
                "Aliases": list(self.aliases) or None, "MacAddress": self.mac_address,
                "DriverOpts": dict(self.driver_opts) if self.driver_opts else None, "NetworkID": self.network_id,
                "EndpointID": self.id, "Gateway": self.gateway, "IPAddress": self.ipv4,
                "IPPrefixLen": self.ipv4_prefixlen, "IPv6Gateway": self.ipv6_gateway,
                "GlobalIPv6Address": self.ipv6, "GlobalIPv6PrefixLen": self.ipv6_prefixlen,
                "DNSNames": list(self.dns_names) or None}

    def body(self) -> dict[str, Any]:
        """The stored form: EndpointSettings plus the private keys (the store's format since the start)."""
        return {**self.settings(), "Container": self.container_id, "ContainerName": self.container_name,
                "NetworkName": self.network_name, "Veth": self.host_interface, "Interface": self.interface}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Endpoint:
        return cls(
            id=body["EndpointID"], network_id=body["NetworkID"], network_name=body.get("NetworkName", ""),
            container_id=body.get("Container", ""), container_name=body.get("ContainerName", ""),
            mac_address=body.get("MacAddress") or "", ipv4=body.get("IPAddress") or "",
            ipv4_prefixlen=int(body.get("IPPrefixLen") or 0), gateway=body.get("Gateway") or "",
            ipv6=body.get("GlobalIPv6Address") or "", ipv6_prefixlen=int(body.get("GlobalIPv6PrefixLen") or 0),
            ipv6_gateway=body.get("IPv6Gateway") or "", aliases=tuple(body.get("Aliases") or ()),
            dns_names=tuple(body.get("DNSNames") or ()), ipam_config=body.get("IPAMConfig") or None,
            driver_opts=body.get("DriverOpts") or None, interface=body.get("Interface") or "",
            host_interface=body.get("Veth") or "",
        )


@dataclass(frozen=True)
class ContainerFiles:
    """The contents of the container's /etc/hostname, /etc/hosts and /etc/resolv.conf."""

    hostname: str
    hosts: str
    resolv_conf: str

    def by_path(self) -> dict[str, str]:
        return {"/etc/hostname": self.hostname, "/etc/hosts": self.hosts, "/etc/resolv.conf": self.resolv_conf}


@dataclass(frozen=True)
class Attachment:
    """What attach and connect answer: Docker's NetworkSettings, the endpoints made, and the files.

    `files` is None in container:<id> mode (the donor's files are shared)."""

    settings: Mapping[str, Any]
    endpoints: tuple[Endpoint, ...] = ()
    files: ContainerFiles | None = None


@dataclass(frozen=True)
class Disconnection:
    """What `network disconnect` changed: the network left, the keys of the request's `endpoints` and
    `connected` that named it (the engine drops them from its record), and the top-level NetworkSettings
    keys that change (leaving the default bridge empties its address fields)."""

    network_id: str
    network_name: str
    refs: tuple[str, ...]
    settings: Mapping[str, Any]


# ----- drivers ---------------------------------------------------------------------------


class NetworkDriver(Protocol):
    """The kernel side of one kind of network (moby's libnetwork driver, netavark's driver.rs).

    The manager calls these with its lock held, in the daemon's network
    namespace; `netns` arguments are paths of the container's namespace. Every
    method leaves nothing behind when it raises, and `delete`/`leave` accept
    objects that are already gone.
    """

    name: str  # Docker's driver name: "bridge", "macvlan", "ipvlan", "overlay"
    scope: str  # "local", or "global" for networks shared by several hosts
    # True when the subnet is routed through a device of ours (bridge, overlay): it must not overlap the
    # host's routes nor contain its addresses. False when it is the parent's own segment (macvlan, ipvlan).
    exclusive_subnet: bool

    def validate(self, spec: NetworkSpec) -> None:
        """Refuse driver options this driver does not know or accept (InvalidParameter, Docker's wording)."""
        ...

    def create(self, network: NetworkRecord) -> NetworkRecord:
        """Make the network's kernel objects; returns the record with `interface`/`driver_state` filled."""
        ...

    def delete(self, network: NetworkRecord) -> None:
        """Remove what `create` made (and only that: a parent interface we did not create stays)."""
        ...

    def join(self, network: NetworkRecord, endpoint: Endpoint, netns: str) -> Endpoint:
        """Give the container its interface on the network: address, MAC, routes, up. Returns the endpoint
        with `interface` (and `host_interface`, if any) set."""
        ...

    def leave(self, network: NetworkRecord, endpoint: Endpoint) -> None:
        """Remove the endpoint's kernel objects (the container's interface goes with its namespace)."""
        ...

    def restore(self, network: NetworkRecord, endpoints: Sequence[tuple[Endpoint, str]],
                dry_run: bool = False) -> list[str]:
        """Reconciliation: re-make the network's objects (unless dry_run) and those of live `endpoints`
        (with their namespace path) that are missing; returns the endpoint objects that were (or, with
        dry_run, would be) re-made, in words for `system check`. Called with no endpoints at daemon
        start-up; nothing of a live container is removed here."""
        ...
