"""Network records: builtin networks, `network create/rm/ls/inspect/prune`, subnet choice.

Records are Store documents of kind "network" in Docker's inspect shape plus a
private "Coracle" key (`NetworkRecord.document`). The kernel objects of a
network are its driver's; this module decides names, subnets and gateways
(the same rules for every driver) and refuses bad requests before any driver
is asked to make anything.
"""

from __future__ import annotations

import builtins
import ipaddress
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from coracle import trace
from coracle.clock import timestamp
from coracle.errors import Conflict, InvalidParameter, NotFound
from coracle.network import netlink
from coracle.network.driver import OPT, NetworkRecord, NetworkSpec, Subnet, SubnetRequest
from coracle.network.drivers.bridge import BridgeDriver, flag
from coracle.network.endpoints import EndpointTable
from coracle.network.hostnet import HostNetwork
from coracle.network.ipam import (
    DEFAULT_POOLS6,
    IPAM,
    Network,
    check_assignable,
    parse_address,
    Span,
    overlaps,
    parse_subnet,
    pick_subnet,
    span,
)
from coracle.network.registry import DriverRegistry
from coracle.store import Store

__all__ = ["Networks"]

KIND = "network"
DEFAULT_BRIDGE_SUBNET = "172.17.0.0/16"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
DEFAULT_MTU = 1500
BUILTIN_DRIVERS = ("host", "null", "none")


def filter_values(filters: Mapping[str, Any] | None, key: str) -> list[str]:
    """Docker filters come as {"k": ["v"]} or the older {"k": {"v": true}}."""
    value = (filters or {}).get(key)
    if value is None:
        return []
    if isinstance(value, dict):
        return [k for k, v in value.items() if v]
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def labels_match(labels: Mapping[str, str], wanted: list[str], negate: bool = False) -> bool:
    for spec in wanted:
        key, eq, val = spec.partition("=")
        hit = key in labels and (not eq or labels[key] == val)
        if hit == negate:
            return False
    return True


class Networks:
    """The networks of one daemon (see the module docstring)."""

    def __init__(self, store: Store, ipam: IPAM, endpoints: EndpointTable, drivers: DriverRegistry,
                 bridge: BridgeDriver, host_netns: str, lock: threading.RLock, *, bridge_name: str,
                 bip: str | None, pools: builtins.list[tuple[str, int]], mtu: int = DEFAULT_MTU) -> None:
        self.store, self.ipam, self.endpoints, self.drivers, self.bridge = store, ipam, endpoints, drivers, bridge
        self.host_netns, self._lock = host_netns, lock
        self.host = HostNetwork(host_netns)  # its routes and addresses, which a new subnet must not overlap
        self.bridge_name, self.bip, self.pools = bridge_name, bip, pools
        self.mtu = mtu  # of bridges and veths whose network names none (dockerd's --mtu)
        # told of every network made or removed, whoever asked (API, prune): the manager's events
        self.announce: Callable[[str, NetworkRecord], None] = lambda action, rec: None
        # Every create checks against every network: records are decoded once per change, not per call.
        self._records: tuple[NetworkRecord, ...] | None = None
        self._generation = 0
        self._spans: dict[int, tuple[int, builtins.list[Span]]] = {}  # IP version: (generation, ranges)
        self._cache_lock = threading.Lock()

    def all(self) -> builtins.list[NetworkRecord]:
        with self._cache_lock:
            cached, generation = self._records, self._generation
        if cached is None:
            cached = tuple(NetworkRecord.from_document(d) for d in self.store.all(KIND))
            with self._cache_lock:
                if generation == self._generation:  # no write since the read began
                    self._records = cached
        return list(cached)

    def save(self, rec: NetworkRecord) -> None:
        try:
            self.store.put(KIND, rec.id, rec.document())
        except BaseException:
            self._changed(None)
            raise
        self._changed(rec)

    def _changed(self, saved: NetworkRecord | None, removed: str = "") -> None:
        """Keep the decoded records in step with a write: the saved record put in place, a removed one
        dropped; after a failed write they are read again."""
        with self._cache_lock:
            records, spans = self._records, {}
            if records is None or (saved is None and not removed):
                records = None
            elif saved is None:
                records = tuple(r for r in records if r.id != removed)
            elif any(r.id == saved.id for r in records):  # an update keeps its place (the store's rowid order)
                records = tuple(saved if r.id == saved.id else r for r in records)
            else:
                records = (*records, saved)
                # a new network adds its ranges (what a run of creates does): the others stay as they were
                spans = {version: (self._generation + 1, [*ranges, *self._ranges(saved, version)])
                         for version, (generation, ranges) in self._spans.items() if generation == self._generation}
            self._records, self._spans, self._generation = records, spans, self._generation + 1

    def with_driver(self) -> builtins.list[NetworkRecord]:
        """Networks whose kernel objects a driver owns (all but host and none)."""
        return [r for r in self.all() if r.driver in self.drivers]

    def resolve(self, ref: str) -> NetworkRecord:
        """A network by full id, name, or unique id prefix ("default" is the default bridge)."""
        records = self.all()
        for found in ([r for r in records if r.id == ref], [r for r in records if r.name == ref]):
            if found:
                return found[0]
        if ref == "default":
            return self.resolve("bridge")
        matches = [r for r in records if ref and r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidParameter(f"network {ref} is ambiguous ({len(matches)} matches found based on ID prefix)")
        raise NotFound(f"network {ref} not found")

    def find(self, ref: str) -> NetworkRecord | None:
        """resolve() for references that may name nothing any more (a record's stale key)."""
        try:
            return self.resolve(ref)
        except (NotFound, InvalidParameter):
            return None

    def host_gateway(self) -> str:
        """The default bridge's gateway: what `host-gateway` in --add-host means."""
        for rec in self.all():
            if rec.name == "bridge" and rec.builtin:
                return str(rec.subnet4.gateway)
        return "127.0.0.1"

    # ----- builtin networks ---------------------------------------------------------

    def ensure_builtin(self) -> None:
        """host, none, and the default bridge as the daemon's flags say (its kernel objects replaced if
        the flags changed)."""
        records = {r.name: r for r in self.all() if r.builtin}
        for name, drv in (("host", "host"), ("none", "null")):
            if name not in records:
                self.save(self._record(name, drv, (), {}, {}, builtin=True, ipam_options=None))
        old = records.get("bridge")
        if self.bip:
            iface = ipaddress.ip_interface(self.bip)
            if iface.version != 4 or iface.network.prefixlen > 30:
                raise InvalidParameter(f"invalid --bip {self.bip}: expected an IPv4 address/prefix")
            subnet: Network = iface.network
            gateway: ipaddress.IPv4Address | ipaddress.IPv6Address = iface.ip
        elif old is not None:
            subnet, gateway = old.subnet4.network, old.subnet4.gateway
        else:
            subnet = ipaddress.IPv4Network(DEFAULT_BRIDGE_SUBNET)
            if overlaps(subnet, self.taken()):
                subnet = pick_subnet(self.pools, self.taken())
            gateway = subnet[1]
        options = {OPT + "bridge.default_bridge": "true", OPT + "bridge.enable_icc": "true",
                   OPT + "bridge.enable_ip_masquerade": "true", OPT + "bridge.host_binding_ipv4": "0.0.0.0",
                   OPT + "bridge.name": self.bridge_name, OPT + "driver.mtu": str(self.mtu)}
        fresh = self._record("bridge", "bridge", (Subnet(subnet, gateway),), options, {}, builtin=True,
                             ipam_options=None)
        if old is not None:
            fresh = NetworkRecord.from_document({**fresh.document(), "Id": old.id, "Created": old.created})
            if old.interface != self.bridge_name or old.subnets != fresh.subnets:
                self.bridge.delete(old)
        self.save(fresh)

    def _record(self, name: str, driver: str, subnets: tuple[Subnet, ...], options: Mapping[str, str],
                labels: Mapping[str, str], *, builtin: bool = False, internal: bool = False,
                enable_ipv6: bool = False, attachable: bool = False,
                ipam_options: Mapping[str, str] | None = None) -> NetworkRecord:
        nid = secrets.token_hex(32)
        opts = {k: str(v) for k, v in options.items()}
        interface = opts.get(OPT + "bridge.name") or f"br-{nid[:12]}" if driver in ("bridge", "host", "null") else ""
        return NetworkRecord(
            id=nid, name=name, driver=driver, created=timestamp(), subnets=subnets, internal=internal,
            attachable=attachable, enable_ipv6=enable_ipv6, builtin=builtin, interface=interface,
            mtu=int(opts.get(OPT + "driver.mtu") or self.mtu), icc=flag(opts, "bridge.enable_icc", True),
            masquerade=flag(opts, "bridge.enable_ip_masquerade", True), options=opts, labels=dict(labels),
            ipam_options=ipam_options)

    def subnet_spans(self, version: int = 4) -> builtins.list[Span]:
        """Our networks' subnets of one IP version as address ranges: worked out once per change of the
        networks, not on every create."""
        with self._cache_lock:
            generation = self._generation
            cached = self._spans.get(version)
        if cached is not None and cached[0] == generation:
            return cached[1]
        spans = [found for r in self.all() for found in self._ranges(r, version)]
        with self._cache_lock:
            if generation == self._generation:  # no write since the read began
                self._spans[version] = (generation, spans)
        return spans

    def _ranges(self, rec: NetworkRecord, version: int) -> builtins.list[Span]:
        if rec.driver not in self.drivers or (version == 6 and not rec.enable_ipv6):
            return []
        return [span(s.network) for s in rec.subnets if s.version == version]

    def taken(self, version: int = 4) -> builtins.list[Span]:
        """Address ranges in use: our networks' subnets and the host's routes (our bridges' among them,
        each the same range as its network's subnet)."""
        return self.subnet_spans(version) + self.host.route_spans(socket.AF_INET6 if version == 6 else socket.AF_INET)

    # ----- create / remove ------------------------------------------------------------

    def create(self, spec: NetworkSpec, prepare: Callable[[NetworkRecord], None] | None = None) -> NetworkRecord:
        """`docker network create`: checked, subnets chosen, the driver's objects made, then stored;
        nothing is left behind on error."""
        if not isinstance(spec.name, str) or not NAME_RE.match(spec.name):
            raise InvalidParameter(f"invalid network name {spec.name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if spec.driver in BUILTIN_DRIVERS:
            raise Conflict(f'only one instance of "{spec.driver}" network is allowed')
        driver = self.drivers.get(spec.driver)
        if spec.ipam_driver != "default":
            raise InvalidParameter(f"IPAM driver {spec.ipam_driver!r} is not supported (default is)")
        cfg4, cfg6 = spec.subnet(4), spec.subnet(6)
        if cfg6 is not None and not spec.enable_ipv6:
            raise InvalidParameter(f"IPv6 subnet {cfg6.subnet} given but IPv6 is not enabled on the network "
                                   "(use --ipv6)")
        if spec.enable_ipv6 and not os.path.isdir("/proc/sys/net/ipv6"):
            raise InvalidParameter("IPv6 networks need a kernel with IPv6 enabled")
        mtu = spec.options.get(OPT + "driver.mtu")
        if mtu is not None and not (str(mtu).isdigit() and 68 <= int(mtu) <= 65535):
            raise InvalidParameter(f"invalid MTU {mtu!r}: expected 68-65535")
        driver.validate(spec)
        phases = trace.Phases("network create", spec.name)
        with self._lock:
            if any(r.name == spec.name for r in self.all()):
                raise Conflict(f"network with name {spec.name} already exists")
            phases.mark("name")
            exclusive = driver.exclusive_subnet
            subnets = [self.subnet(cfg4 or SubnetRequest(), 4, exclusive)]
            if spec.enable_ipv6:
                subnets.append(self.subnet(cfg6 or SubnetRequest(), 6, exclusive))
            phases.mark("subnets")
            rec = self._record(spec.name, spec.driver, tuple(subnets), spec.options, spec.labels,
                               internal=spec.internal, enable_ipv6=spec.enable_ipv6, attachable=spec.attachable,
                               ipam_options=spec.ipam_options)
            if prepare is not None:
                prepare(rec)
            phases.mark("device check")
            made = driver.create(rec)
            phases.mark("driver")
            try:
                self.save(made)
            except BaseException:
                driver.delete(made)
                raise
            phases.mark("save")
        self.announce("create", made)
        phases.mark("announce")
        phases.done()
        return made

    def subnet(self, cfg: SubnetRequest, version: int, exclusive: bool) -> Subnet:
        """A new network's subnet of one family: the given one, checked, or one picked from the pools."""
        if cfg.subnet:
            subnet = self._chosen_subnet(cfg.subnet, version, exclusive)
            # compared as integer ranges: Network.overlaps took 5 µs a network, 2.8 ms at 540 networks
            if overlaps(subnet, self.subnet_spans(version)):
                other = next(r for r in self.all() if overlaps(subnet, self._ranges(r, version)))
                raise Conflict(f"invalid pool request: Pool overlaps with other one on this address "
                               f"space ({subnet} overlaps network {other.name})")
        else:
            if cfg.gateway or cfg.ip_range or cfg.aux_addresses:
                raise InvalidParameter("a gateway or an IP range needs a subnet" if version == 4 else
                                       "an IPv6 gateway or IP range needs an IPv6 subnet")
            subnet = pick_subnet(self.pools if version == 4 else DEFAULT_POOLS6, self.taken(version=version), version)
        gateway = parse_address(cfg.gateway, "gateway", version) if cfg.gateway else subnet[1]
        if gateway not in subnet or gateway == subnet.network_address or (
                version == 4 and gateway == subnet.broadcast_address):
            raise InvalidParameter(f"invalid gateway {gateway}: not a host address of subnet {subnet}")
        ip_range = None
        if cfg.ip_range:
            ip_range = parse_subnet(cfg.ip_range, version)
            if not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
                raise InvalidParameter(f"invalid ip-range {ip_range}: not inside subnet {subnet}")
        aux = {}
        for name, text in cfg.aux_addresses.items():
            address = parse_address(text, f"auxiliary address {name}", version)
            if address not in subnet:
                raise InvalidParameter(f"invalid auxiliary address {name}={address}: not in subnet {subnet}")
            aux[name] = address
        return Subnet(subnet, gateway, ip_range, aux)

    def _chosen_subnet(self, text: str, version: int, exclusive: bool) -> Network:
        """A subnet given by the user: well formed, no special-purpose block, and, for a subnet routed
        through a device of ours, none of the host's own addresses (a bridge holding one would steal the
        host's traffic for it)."""
        subnet = parse_subnet(text, version)
        check_assignable(subnet)
        if not exclusive:
            return subnet
        inside = self.host.addresses_in(subnet)
        if not inside:
            return subnet
        # Only the (rare) addresses inside the subnet are looked up by name: one request per existing bridge
        # made every create slower with each network.
        ours = {r.interface for r in self.with_driver() if r.driver == self.bridge.name}
        with netlink.netns_socket(self.host_netns) as ipr:
            for address, idx in inside:
                name = ipr.get_links(idx)[0].get_attr("IFLA_IFNAME")
                if name not in ours:
                    raise InvalidParameter(f"invalid subnet {subnet}: it contains {address}, an address of this "
                                           f"host (on {name})")
        return subnet

    def remove(self, ref: str) -> NetworkRecord:
        """`docker network rm`: refused for builtin networks and while endpoints are attached."""
        phases = trace.Phases("network rm", ref)
        with self._lock:
            rec = self.resolve(ref)
            if rec.builtin:
                raise Conflict(f"{rec.name} is a pre-defined network and cannot be removed")
            if self.endpoints.of(network=rec.id):
                raise Conflict(f"error while removing network: network {rec.name} id {rec.id} has active endpoints")
            phases.mark("checks")
            self.drivers.get(rec.driver).delete(rec)
            phases.mark("driver")
            self.ipam.release_network(rec.id)
            try:
                self.store.delete(KIND, rec.id)
            except BaseException:
                self._changed(None)
                raise
            self._changed(None, removed=rec.id)
            phases.mark("save")
        self.announce("destroy", rec)
        phases.mark("announce")
        phases.done()
        return rec

    # ----- views ------------------------------------------------------------------------

    def view(self, rec: NetworkRecord) -> dict[str, Any]:
        """Docker's network inspect."""
        out = {k: v for k, v in rec.document().items() if k != "Coracle"}
        out["Containers"] = {
            ep.container_id: {"Name": ep.container_name, "EndpointID": ep.id, "MacAddress": ep.mac_address,
                              "IPv4Address": f"{ep.ipv4}/{ep.ipv4_prefixlen}" if ep.ipv4 else "",
                              "IPv6Address": f"{ep.ipv6}/{ep.ipv6_prefixlen}" if ep.ipv6 else ""}
            for ep in self.endpoints.of(network=rec.id)
        }
        return out

    def list(self, filters: Mapping[str, Any] | None = None) -> builtins.list[dict[str, Any]]:
        """`docker network ls` with Docker's filters: name, id, driver, label, type, scope, dangling."""
        out = []
        names, ids = filter_values(filters, "name"), filter_values(filters, "id")
        drivers, labels = filter_values(filters, "driver"), filter_values(filters, "label")
        types, scopes = filter_values(filters, "type"), filter_values(filters, "scope")
        dangling = filter_values(filters, "dangling")
        for rec in self.all():
            if names and not any(n in rec.name for n in names):
                continue
            if ids and not any(rec.id.startswith(i) for i in ids):
                continue
            if drivers and rec.driver not in drivers:
                continue
            if labels and not labels_match(rec.labels, labels):
                continue
            if types and ("builtin" if rec.builtin else "custom") not in types:
                continue
            if scopes and rec.scope not in scopes:
                continue
            view = self.view(rec)
            if dangling and (dangling[0].lower() in ("true", "1")) != (not view["Containers"]):
                continue
            out.append(view)
        return out

    def prune(self, filters: Mapping[str, Any] | None = None) -> builtins.list[str]:
        """Remove custom networks without endpoints (label / label! filters); returns their names."""
        removed = []
        with self._lock:
            for rec in self.all():
                if rec.builtin or rec.scope != "local" or self.endpoints.of(network=rec.id):
                    continue  # a global network spans hosts: only `network rm` removes it, everywhere
                if not labels_match(rec.labels, filter_values(filters, "label")):
                    continue
                if not labels_match(rec.labels, filter_values(filters, "label!"), negate=True):
                    continue
                self.remove(rec.id)
                removed.append(rec.name)
        return removed
