"""Container networking: what the engine calls, for every driver.

The engine builds one typed `ContainerNetworkRequest` per container (see
driver.py) and talks to one `NetworkManager`; the manager never sees the
container's Docker record. Its parts, each in its own module:

- networks.py: network records, builtin networks, subnet choice;
- endpoints.py: endpoint rows (and the resolver's name table that mirrors them);
- ipam.py: address leases; published.py: host ports (ports.py parses -p);
- registry.py and drivers/: the kernel objects of each kind of network
  (bridge: a Linux bridge, veths and nftables rules);
- dns.py (the 127.0.0.11 resolver) and etcfiles.py (/etc/hosts, resolv.conf).

Modes (`NetworkMode`): bridge or a user network: an endpoint per network,
address from IPAM (or the static one asked for), a random locally
administered MAC unless given, lo up, a default route via the first network's
gateway (none for `internal` networks), ports published on the first
network's address, and on user networks DNS at 127.0.0.11. `none`: lo up.
`host`: nothing. `container:<id>`: nothing (the runtime joins the donor's
namespace).

How the engine uses it (all methods are thread-safe; the engine holds a
per-container lock, so one container is never attached twice at once):

    net = NetworkManager(store, exec_root, bridge_name="coracle0", bip=None,
                         default_pools=[("10.200.0.0/14", 24)], firewall="nftables",
                         resolv_conf="/etc/resolv.conf", hosts_file="/etc/hosts")
    net.start()                         # builtin networks, bridges, nft table restored
    net.reconcile(live, dry_run)        # live = {container id: PID 1}: drops what others left
    net.validate(request)               # at create: raises clear errors
    attachment = net.attach(request)    # at start (request.netns set): settings, endpoints and files
    net.files(request, settings)        # the files again, from recorded settings
    net.detach(cid)                     # at exit/stop/rm/failed start: idempotent
    connection = net.connect(request, network_ref, options)      # live when request.netns is set
    disconnection = net.disconnect(request or cid, network_ref, force)
    dns_names = net.rename(request, old_name)   # request already carries the new name
    net.create(name, driver, ipam, internal, options, labels, enable_ipv6, attachable)
        -> {"Id", "Warning"}; net.remove(ref); net.inspect(ref); net.list(filters); net.prune(filters)

Errors: InvalidParameter (bad CIDR, gateway outside the subnet, bad port,
static address outside the subnet...), NotFound ("network foo not found"),
Conflict (name taken, overlapping subnet, "Bind for 0.0.0.0:8080 failed: port
is already allocated", address in use, network with active endpoints, builtin
network).

IPv6 (`network create --ipv6 [--subnet <v6>]`): the network keeps its IPv4
subnet and gains an IPv6 one (given, or a /64 of fdc0:ac1e::/48), gateway =
first address. Containers get GlobalIPv6Address (`--ip6` for a static one), a
default IPv6 route via the gateway (none when internal), AAAA records, an
/etc/hosts line; published ports without HostIp are published on :: too.

`attach` joins, in order: the mode's network, then every network of the
request's `endpoints` (NetworkingConfig), then those of `connected` (the
record's NetworkSettings: `connect`ed while stopped). On any failure
everything made so far is undone (coracle.undo) before the error propagates.

The manager acts on the network namespace of the thread that constructed it
(the daemon's own), whatever thread later calls it: it keeps a handle on that
namespace and opens every netlink/nftables socket inside it.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, overload

from coracle.errors import Conflict, InvalidParameter
from coracle.events import EventBus
from coracle.faults import fault
from coracle.netns import netns
from coracle.network import etcfiles, netlink
from coracle.network.dns import Resolver, upstreams_from
from coracle.network.driver import (
    Attachment,
    ContainerFiles,
    ContainerNetworkRequest,
    Disconnection,
    Endpoint,
    EndpointOptions,
    NetworkDriver,
    NetworkRecord,
    NetworkSpec,
    SubnetRequest,
)
from coracle.network.drivers.bridge import BridgeDriver
from coracle.network.drivers.macvlan import IpvlanDriver, MacvlanDriver
from coracle.network.endpoints import EndpointTable
from coracle.network.firewall import FirewallDriver, driver
from coracle.network.ipam import DEFAULT_POOLS, IPAM, Address, parse_address
from coracle.network.names import NameTable
from coracle.network.networks import DEFAULT_MTU, Networks
from coracle.network.overlay import OverlayNetworks
from coracle.network.overlay_cluster import OverlayCluster
from coracle.network.ports import Mapping as PortMapping
from coracle.network.published import PortTable
from coracle.network.registry import DriverRegistry
from coracle.store import Store
from coracle.undo import Undo

__all__ = ["Adoption", "Connection", "NetworkManager"]

log = logging.getLogger(__name__)

MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")
TOP_LEVEL = ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress", "IPv6Gateway",
             "GlobalIPv6Address", "GlobalIPv6PrefixLen")


@dataclass(frozen=True)
class Connection:
    """What `network connect` changed: the network joined and its entry of NetworkSettings.Networks
    (an endpoint when the container runs, the recorded wish otherwise)."""

    network_id: str
    network_name: str
    settings: Mapping[str, Any]
    endpoint: Endpoint | None = None


@dataclass(frozen=True)
class Adoption:
    """What `adopt` recorded again, and the new ids of networks the record names under an old one."""

    found: list[str] = field(default_factory=list)
    network_ids: dict[str, str] = field(default_factory=dict)  # key in NetworkSettings.Networks -> id


def _shown(m: PortMapping) -> str:
    return f"{m.host_ip}:{m.host_port}/{m.proto} -> {m.container_ip}:{m.container_port}"


class NetworkManager:
    """Networks and container endpoints of one daemon (see the module docstring)."""

    def __init__(self, store: Store, exec_root: str, *, bridge_name: str = "coracle0", bip: str | None = None,
                 default_pools: builtins.list[tuple[str, int]] | None = None, firewall: str = "nftables",
                 resolv_conf: str = "/etc/resolv.conf", hosts_file: str = "/etc/hosts",
                 mtu: int = DEFAULT_MTU, cluster: OverlayCluster | None = None) -> None:
        self.store = store
        self.events: EventBus | None = None  # where network events go (the daemon's bus)
        self.exec_root = exec_root
        self.resolv_conf = resolv_conf
        self.hosts_file = hosts_file
        self._ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.host_netns = f"/proc/self/fd/{self._ns_fd}"
        self._lock = threading.RLock()  # guards records, port choice, endpoint creation
        self.ipam = IPAM(store)
        self.firewall: FirewallDriver = driver(firewall, self.host_netns)
        self.names = NameTable()  # what the resolver answers: kept in step with every endpoint row
        self.endpoints = EndpointTable(store, self.names)
        self.names.load(ep.body() for ep in self.endpoints.of())
        self.ports = PortTable(store, self.firewall, self.host_netns, self._lock, exec_root)
        self.bridge = BridgeDriver(self.host_netns, self.firewall)
        macvlan = MacvlanDriver(self.host_netns, lambda: self.networks.all())
        self.drivers = DriverRegistry([self.bridge, macvlan,
                                       IpvlanDriver(self.host_netns, lambda: self.networks.all())])
        self.networks = Networks(store, self.ipam, self.endpoints, self.drivers, self.bridge, self.host_netns,
                                 self._lock, bridge_name=bridge_name, bip=bip,
                                 pools=list(default_pools or DEFAULT_POOLS), mtu=mtu)
        self.networks.announce = self._announce
        self.dns = Resolver(self.names, self.host_netns, upstreams_from(resolv_conf))
        self.overlay: OverlayNetworks | None = None  # overlay networks: only with a cluster store
        if cluster is not None:
            from coracle.network.drivers.overlay import OverlayDriver

            overlay_driver = OverlayDriver(self.bridge, macvlan, cluster.address)
            self.drivers.register(overlay_driver)
            self.overlay = OverlayNetworks(cluster, overlay_driver, self.networks, self.endpoints, self.names,
                                           self._lock)

    def close(self) -> None:
        """Stop the resolver, and the port proxy when it serves nothing; drop the namespace handle (kernel
        state stays: live restore)."""
        self.dns.close()
        self.ports.close()
        self.networks.host.close()
        if self.overlay is not None:
            self.overlay.close()
        if self._ns_fd >= 0:
            os.close(self._ns_fd)
            self._ns_fd = -1

    def start(self) -> None:
        """Builtin networks, each driver's devices and the firewall table, as the store describes them."""
        with self._lock:
            with netns(self.host_netns):
                netlink.sysctl("net/ipv4/ip_forward", "1")
            self.networks.ensure_builtin()
            networks = self.networks.with_driver()
            # rules first: a bridge gets route_localnet only once the loopback guard exists
            # an overlay's gateway link stands where a bridge network's bridge does: the same rules
            self.firewall.restore([self.bridge.rules(r) for r in networks if r.driver in (self.bridge.name, "overlay")],
                                  self.ports.routed())
            for rec in networks:
                self.drivers.get(rec.driver).restore(rec, ())
        self.ports.restore()
        if self.overlay is not None:
            self.overlay.start()

    def _announce(self, action: str, rec: NetworkRecord, **extra: str) -> None:
        """Docker's network event, wherever the change came from: the network's ID as the actor,
        its name and driver (and the container, for connect and disconnect) as attributes."""
        if self.events is not None:
            self.events.publish("network", action, rec.id, {**extra, "name": rec.name, "type": rec.driver})

    def _announce_endpoints(self, action: str, endpoints: Iterable[Endpoint]) -> None:
        for ep in endpoints:
            rec = self.networks.find(ep.network_id)
            if rec is not None:
                self._announce(action, rec, container=ep.container_id)

    def _driver(self, rec: NetworkRecord) -> NetworkDriver:
        return self.drivers.get(rec.driver)

    # ----- networks --------------------------------------------------------------------

    def resolve(self, ref: str) -> NetworkRecord:
        """A network by full id, name, or unique id prefix ("default" is the default bridge)."""
        return self.networks.resolve(ref)

    def create(self, name: str, driver: str = "bridge", ipam: Mapping[str, Any] | None = None,
               internal: bool = False, options: Mapping[str, Any] | None = None,
               labels: Mapping[str, str] | None = None, enable_ipv6: bool = False, attachable: bool = False,
               **_ignored: Any) -> dict[str, str]:
        """`docker network create` from the Engine API's fields; nothing is left behind on error."""
        ipam = ipam or {}
        spec = NetworkSpec(name, driver, tuple(SubnetRequest.from_docker(c) for c in ipam.get("Config") or []),
                           bool(internal), bool(attachable), bool(enable_ipv6),
                           {k: str(v) for k, v in (options or {}).items()}, dict(labels or {}),
                           ipam.get("Driver") or "default", dict(ipam.get("Options") or {}))
        if spec.driver == "overlay" and self.overlay is None:
            raise InvalidParameter("network driver 'overlay' is not supported without a cluster store: start "
                                   "coracled with --cluster-store etcd://IP:PORT --cluster-advertise IP")
        rec = self.overlay.create(spec) if self.overlay is not None and spec.driver == "overlay" else \
            self.networks.create(spec, self._check_device)
        return {"Id": rec.id, "Warning": ""}

    def _check_device(self, rec: NetworkRecord) -> None:
        if rec.driver == self.bridge.name:
            self.bridge.check_device(rec, self.networks.all())

    def remove(self, ref: str) -> None:
        """`docker network rm`: refused for builtin networks and while endpoints are attached (on any
        host, for an overlay network, which goes from every host)."""
        rec = self.resolve(ref)
        if self.overlay is not None and rec.driver == "overlay":
            if self.endpoints.of(network=rec.id):  # the local refusal first: the same words as a bridge's
                self.networks.remove(rec.id)
            self.overlay.remove(rec)
            return
        self.networks.remove(ref)

    def inspect(self, ref: str) -> dict[str, Any]:
        return self.networks.view(self.resolve(ref))

    def list(self, filters: Mapping[str, Any] | None = None) -> builtins.list[dict[str, Any]]:
        return self.networks.list(filters)

    def prune(self, filters: Mapping[str, Any] | None = None) -> builtins.list[str]:
        return self.networks.prune(filters)

    # ----- validation ----------------------------------------------------------------------

    def validate(self, request: ContainerNetworkRequest) -> None:
        """Create-time checks of a container's network settings; raises with Docker's wording."""
        mode = request.mode
        if mode.is_container:
            if request.ports:
                raise InvalidParameter("conflicting options: port publishing and the container type network mode")
            if not request.dns.empty:
                raise InvalidParameter("conflicting options: dns and the network mode")
            if request.extra_hosts:
                raise InvalidParameter("conflicting options: custom host-to-IP mapping and the network mode")
            if request.endpoints:
                raise InvalidParameter("container sharing network namespace with another container or host "
                                       "cannot be connected to any other network")
            return
        etcfiles.extra_hosts(list(request.extra_hosts), "127.0.0.1")
        if mode.is_host or mode.is_none:
            for opts in request.endpoints:
                if self.resolve(opts.network).name != mode.name:
                    raise InvalidParameter(f"container cannot be connected to network {opts.network} in {mode} mode")
            return
        self.resolve(mode.name)
        for opts in request.endpoints:
            self._check_endpoint(self.resolve(opts.network), opts)

    def _check_endpoint(self, rec: NetworkRecord, opts: EndpointOptions) -> None:
        if rec.driver not in self.drivers:
            raise InvalidParameter(f"container cannot be connected to the {rec.name} network this way")
        if opts.ipv4_address:
            if rec.builtin:
                raise InvalidParameter("user specified IP address is supported on user defined networks only")
            self._static(rec, opts.ipv4_address, 4)
        if opts.ipv6_address:
            if rec.subnet6 is None:
                raise InvalidParameter(f"invalid IPv6 address {opts.ipv6_address}: network {rec.name} has no IPv6 "
                                       "(create it with --ipv6)")
            self._static(rec, opts.ipv6_address, 6)
        if opts.aliases and rec.builtin:
            raise InvalidParameter("network-scoped alias is supported only for containers in user defined networks")
        if opts.mac_address and not MAC_RE.match(opts.mac_address):
            raise InvalidParameter(f"invalid MAC address {opts.mac_address!r}")

    @staticmethod
    def _static(rec: NetworkRecord, text: str, version: int) -> Address:
        """A static address asked for (--ip, --ip6): inside the subnet, not the gateway nor reserved."""
        sub = rec.subnet4 if version == 4 else rec.subnet6
        assert sub is not None
        addr = parse_address(text, f"IPv{version} address", version)
        if addr not in sub.network or addr == sub.network.network_address or (
                version == 4 and addr == sub.network.broadcast_address):
            raise InvalidParameter(f"invalid IPv{version} address {addr}: not in subnet {sub.network} of network "
                                   f"{rec.name}")
        if addr == sub.gateway:
            raise InvalidParameter(f"invalid IPv{version} address {addr}: it is the gateway of network {rec.name}")
        if addr in sub.aux_addresses.values():
            raise InvalidParameter(f"invalid IPv{version} address {addr}: it is an auxiliary address of network "
                                   f"{rec.name}")
        return addr

    # ----- attach / detach -------------------------------------------------------------------

    def _plan(self, request: ContainerNetworkRequest) -> builtins.list[tuple[NetworkRecord, EndpointOptions]]:
        """(network, endpoint options) to join, the mode's network first, without duplicates."""
        plan: dict[str, tuple[NetworkRecord, EndpointOptions]] = {}
        for opts in (EndpointOptions(request.mode.name), *request.endpoints, *request.connected):
            rec = self.resolve(opts.network)
            if rec.id in plan:
                if plan[rec.id][1].empty and not opts.empty:
                    plan[rec.id] = (rec, opts)
                continue
            plan[rec.id] = (rec, opts)
        return list(plan.values())

    def attach(self, request: ContainerNetworkRequest) -> Attachment:
        """Wire the held container (request.netns) into its networks: settings, endpoints and files."""
        cid, mode, ns_path = request.container_id, request.mode, request.netns
        if mode.is_container:
            return Attachment(self._settings(request, [], [], ""))
        with Undo(f"attach of {cid}") as undo:
            if not mode.has_endpoints:
                if mode.is_none:
                    netlink.loopback_up(ns_path)
                rec = self.resolve(mode.name)
                ep = self._record_endpoint(request, rec, {}, undo)
                settings = self._settings(request, [ep], [], ns_path if mode.is_none else "")
                attached = Attachment(settings, (ep,), self._files(request, settings["Networks"]))
            else:
                attached = self._attach_networks(request, undo)
        self._announce_endpoints("connect", attached.endpoints)
        return attached

    def _attach_networks(self, request: ContainerNetworkRequest, undo: Undo) -> Attachment:
        """attach's part for modes with their own endpoints: join each network, publish, serve DNS."""
        cid, ns_path = request.container_id, request.netns
        plan = self._plan(request)
        endpoints = [self._join(request, rec, opts, undo, first=(i == 0)) for i, (rec, opts) in enumerate(plan)]
        primary = plan[0][0]
        # published ports are DNAT in the host: only for a subnet routed through the host (not macvlan)
        routed = not primary.internal and self._driver(primary).exclusive_subnet
        mappings = self.ports.publish(cid, request.ports, endpoints[0], undo) if routed else []
        if any(rec.dns_enabled for rec, _ in plan):
            self._serve_dns(cid, ns_path, request)
            undo.add(lambda: self.dns.stop(cid))
        settings = self._settings(request, endpoints, mappings, ns_path)
        return Attachment(settings, tuple(endpoints), self._files(request, settings["Networks"]))

    def _serve_dns(self, cid: str, ns_path: str, request: ContainerNetworkRequest | None = None) -> None:
        servers = request.dns.servers if request is not None else ()
        self.dns.serve(cid, ns_path, [d for d in servers if ":" not in d])

    def _record_endpoint(self, request: ContainerNetworkRequest, rec: NetworkRecord, fields: Mapping[str, Any],
                         undo: Undo) -> Endpoint:
        """Insert the endpoint row (the reservation other threads see) and register its undo."""
        ep = Endpoint(id=secrets.token_hex(32), network_id=rec.id, network_name=rec.name,
                      container_id=request.container_id, container_name=request.name, **fields)
        self.endpoints.insert(ep)
        undo.add(lambda: self._drop_endpoint(ep))
        return ep

    def _drop_endpoint(self, ep: Endpoint) -> None:
        """Remove an endpoint's kernel objects, leases and row; parts already gone are fine."""
        rec = self.networks.find(ep.network_id)
        if rec is not None and rec.driver in self.drivers:
            self._driver(rec).leave(rec, ep)
        if rec is not None and self.overlay is not None and rec.driver == "overlay":
            self.overlay.drop(ep)
        for address in (ep.ipv4, ep.ipv6):
            if address:
                self.ipam.release(ep.network_id, address)
        self.endpoints.delete(ep)

    def _lease(self, rec: NetworkRecord, cid: str, version: int, wanted: str, undo: Undo) -> Address | None:
        sub = rec.subnet4 if version == 4 else rec.subnet6
        if sub is None:
            return None
        if self.overlay is not None and rec.driver == "overlay":  # addresses of the whole cluster
            overlay = self.overlay
            static = parse_address(wanted, f"IPv{version} address", version) if wanted else None
            leased = overlay.allocate(rec, sub, cid, static)
            undo.add(lambda: overlay.release(rec, str(leased), cid))
            return leased
        address = self.ipam.allocate(rec.id, sub.network, sub.gateway, cid, sub.ip_range,
                                     parse_address(wanted, f"IPv{version} address", version) if wanted else None,
                                     reserved=sub.aux_addresses.values())
        undo.add(lambda: self.ipam.release(rec.id, str(address)))
        return address

    def _join(self, request: ContainerNetworkRequest, rec: NetworkRecord, opts: EndpointOptions, undo: Undo,
              first: bool) -> Endpoint:
        """One network: leases, endpoint row, then the driver's interface inside the container."""
        self._check_endpoint(rec, opts)
        cid = request.container_id
        with Undo(f"leases of {cid} on {rec.name}") as leases:  # released at once if the row is refused
            address = self._lease(rec, cid, 4, opts.ipv4_address, leases)
            address6 = self._lease(rec, cid, 6, opts.ipv6_address, leases)
            fault("network-after-lease")
            mac = (opts.mac_address or request.mac_address) if first else opts.mac_address
            aliases = opts.aliases if rec.dns_enabled else ()
            dns_names: tuple[str, ...] = ()
            if rec.dns_enabled:
                dns_names = tuple(dict.fromkeys(n for n in (request.name, cid[:12], *aliases, request.hostname) if n))
            sub, sub6 = rec.subnet4, rec.subnet6
            fields: dict[str, Any] = {
                "ipam_config": opts.ipam_config or None, "aliases": aliases,
                "mac_address": (mac or netlink.random_mac()).lower(),
                "gateway": "" if rec.internal else str(sub.gateway), "ipv4": str(address),
                "ipv4_prefixlen": sub.network.prefixlen, "dns_names": dns_names}
            if sub6 is not None:
                fields.update(ipv6_gateway="" if rec.internal else str(sub6.gateway), ipv6=str(address6),
                              ipv6_prefixlen=sub6.network.prefixlen)
            ep = self._record_endpoint(request, rec, {**fields, "sandbox": request.netns}, leases)
        current = [ep]  # what the undo drops: the endpoint as far as it got
        undo.add(lambda: self._drop_endpoint(current[0]))
        current[0] = joined = self._driver(rec).join(rec, ep, request.netns)
        self.endpoints.update(joined)
        if self.overlay is not None and rec.driver == "overlay":
            self.overlay.publish(rec, joined)
        return joined

    def _settings(self, request: ContainerNetworkRequest, endpoints: builtins.list[Endpoint],
                  mappings: builtins.list[PortMapping], sandbox: str) -> dict[str, Any]:
        """Docker's NetworkSettings for the endpoints and mappings of a container."""
        port_map: dict[str, Any] = dict.fromkeys(request.exposed_ports)
        for m in mappings:
            port_map[m.key] = (port_map.get(m.key) or []) + [{"HostIp": m.host_ip, "HostPort": str(m.host_port)}]
        out: dict[str, Any] = {
            "Bridge": "", "SandboxID": hashlib.sha256(f"{request.container_id}{sandbox}".encode()).hexdigest()
            if sandbox else "", "SandboxKey": sandbox, "HairpinMode": False, "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0, "Ports": port_map, "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
            "Networks": {ep.network_name: ep.settings() for ep in endpoints},
        }
        default = out["Networks"].get("bridge")
        if default:
            for key in TOP_LEVEL:
                out[key] = default[key]
        return out

    def detach(self, container_id: str) -> None:
        """Undo everything of a container: ports, interfaces, leases, endpoints, DNS. Never raises for
        gone things."""
        self.dns.stop(container_id)
        with self._lock:
            self.ports.unpublish(container_id)
            dropped = self.endpoints.of(container=container_id)
            for ep in dropped:
                self._drop_endpoint(ep)
            self.store.execute("DELETE FROM net_leases WHERE container = ?", (container_id,))
        self._announce_endpoints("disconnect", dropped)

    # ----- connect / disconnect --------------------------------------------------------------

    def _listed(self, request: ContainerNetworkRequest, rec: NetworkRecord) -> builtins.list[str]:
        """The keys of the request's endpoints and connected networks that name `rec`."""
        refs = [o.network for o in (*request.endpoints, *request.connected)]
        return list(dict.fromkeys(ref for ref in refs if (found := self.networks.find(ref)) and found.id == rec.id))

    def connect(self, request: ContainerNetworkRequest, network_ref: str, options: EndpointOptions) -> Connection:
        """`docker network connect`: live (next ethN) when request.netns is set, a recorded wish otherwise."""
        rec = self.resolve(network_ref)
        cid = request.container_id
        connected = {o.network for o in request.connected}
        if any(ref in connected for ref in self._listed(request, rec)) or self.endpoints.of(cid, rec.id):
            raise Conflict(f"endpoint with name {request.name} already exists in network {rec.name}")
        options = replace(options, network=rec.name)
        self._check_endpoint(rec, options)
        if not request.netns:
            wish = Endpoint(id="", network_id=rec.id, network_name=rec.name, container_id=cid,
                            container_name=request.name, mac_address=options.mac_address, aliases=options.aliases,
                            ipam_config=options.ipam_config or None)
            self._announce("connect", rec, container=cid)
            return Connection(rec.id, rec.name, wish.settings())
        with Undo(f"connect of {cid} to {rec.name}") as undo:
            ep = self._join(request, rec, options, undo, first=False)
            if rec.dns_enabled and cid not in self.dns.serving():
                self._serve_dns(cid, request.netns, request)
        self._announce("connect", rec, container=cid)
        return Connection(rec.id, rec.name, ep.settings(), ep)

    @overload
    def disconnect(self, request: ContainerNetworkRequest, network_ref: str, force: bool = False
                   ) -> Disconnection: ...

    @overload
    def disconnect(self, request: str, network_ref: str, force: bool = False) -> None: ...

    def disconnect(self, request: ContainerNetworkRequest | str, network_ref: str, force: bool = False
                   ) -> Disconnection | None:
        """`docker network disconnect`; says what changed when given the container's request."""
        rec = self.resolve(network_ref)
        full = request if isinstance(request, ContainerNetworkRequest) else None
        cid = full.container_id if full is not None else str(request)
        connected = {o.network for o in full.connected} if full is not None else set()
        listed = self._listed(full, rec) if full is not None else []
        endpoints = self.endpoints.of(cid, rec.id)
        if not any(ref in connected for ref in listed) and not endpoints and not force:
            raise Conflict(f"container {cid} is not connected to network {rec.name}")
        with self._lock:
            self.ports.unpublish(cid, rec.id)
            for ep in endpoints:  # a running container's interface is removed inside its namespace too
                self._drop_endpoint(replace(ep, sandbox=full.netns if full is not None else ""))
        if not any(self._dns_network(ep) for ep in self.endpoints.of(container=cid)):
            self.dns.stop(cid)
        self._announce("disconnect", rec, container=cid)
        if full is None:
            return None
        cleared: dict[str, Any] = {}
        if rec.name == "bridge":
            cleared = {"EndpointID": "", "Gateway": "", "IPAddress": "", "MacAddress": "", "IPPrefixLen": 0}
        return Disconnection(rec.id, rec.name, tuple(listed), cleared)

    def _dns_network(self, ep: Endpoint) -> bool:
        rec = self.networks.find(ep.network_id)
        return rec is not None and rec.dns_enabled

    # ----- files ---------------------------------------------------------------------------

    def files(self, request: ContainerNetworkRequest, settings: Mapping[str, Any] | None) -> ContainerFiles:
        """/etc/hostname, /etc/hosts and /etc/resolv.conf from recorded NetworkSettings."""
        return self._files(request, (settings or {}).get("Networks") or {})

    def _files(self, request: ContainerNetworkRequest, networks: Mapping[str, Mapping[str, Any]]) -> ContainerFiles:
        hostname = request.hostname or request.container_id[:12]
        fqdn = f"{hostname}.{request.domainname}" if request.domainname else hostname
        extra = etcfiles.extra_hosts(list(request.extra_hosts), self.networks.host_gateway())
        try:
            with open(self.resolv_conf) as f:
                host_resolv = f.read()
        except OSError:
            host_resolv = ""
        dns = request.dns
        dns_flags = {"dns": list(dns.servers), "search": list(dns.search), "options": list(dns.options)}
        if request.mode.is_host:
            return ContainerFiles(hostname + "\n", etcfiles.hosts([], extra, self.hosts_file),
                                  etcfiles.resolv_conf(host_resolv, embedded=False, keep_loopback=True, **dns_flags))
        names = fqdn if fqdn == hostname else f"{fqdn} {hostname}"
        first = next((n for n in networks.values() if n.get("IPAddress")), None)
        own = [(first[key], names) for key in ("IPAddress", "GlobalIPv6Address") if first and first.get(key)]
        embedded = any((rec := self.networks.find(ref)) is not None and rec.dns_enabled
                       for ref in [request.mode.name, *networks])
        return ContainerFiles(hostname + "\n", etcfiles.hosts(own, extra),
                              etcfiles.resolv_conf(host_resolv, embedded=embedded, keep_loopback=False, **dns_flags))

    # ----- names -----------------------------------------------------------------------------

    def rename(self, request: ContainerNetworkRequest, old_name: str) -> dict[str, builtins.list[str]]:
        """The container (request.name is the new name) answers to it, not to `old_name`, on its
        networks; returns the new DNSNames by network name, for the engine's record."""
        old_name = old_name.lstrip("/")
        changed: dict[str, builtins.list[str]] = {}
        with self._lock:
            for ep in self.endpoints.of(container=request.container_id):
                names = [request.name if n == old_name else n for n in ep.dns_names]
                renamed = replace(ep, container_name=request.name, dns_names=tuple(names))
                self.endpoints.update(renamed, names_changed=True)
                if names:
                    changed[ep.network_name] = names
        return changed

    # ----- reconciliation ----------------------------------------------------------------------

    def reconcile(self, live: dict[str, int], dry_run: bool = False) -> dict[str, builtins.list[Any]]:
        """Drop endpoints, leases, ports, veths and nft elements of containers not in `live`.

        `live` maps the id of every running container to its PID 1. DNS sockets of
        live containers on user networks are re-opened (they die with the daemon).
        Returns what was (or, with dry_run, would be) removed, by kind (endpoints,
        leases, ports, veths, nft_elements); kinds with nothing to remove are left
        out, so an empty dict means everything was consistent.
        """
        report: dict[str, builtins.list[Any]] = {kind: [] for kind in ("endpoints", "leases", "ports", "veths",
                                                                       "nft_elements")}
        if self.overlay is not None:
            report["overlay"] = self.overlay.check(dry_run)
        with self._lock:
            every = self.endpoints.of()
            for ep in every:
                if ep.container_id not in live:
                    report["endpoints"].append({"container": ep.container_id, "network": ep.network_name,
                                                "endpoint": ep.id})
            for network, address, container in self.ipam.leases():
                if container not in live:
                    report["leases"].append({"network": network, "address": address, "container": container})
            kept = {}
            for container, m in self.ports.by_container():
                if container in live:
                    kept[m] = container
                else:
                    report["ports"].append(_shown(m))
            for m in self.ports.served():
                if m not in kept:
                    report["nft_elements"].append(_shown(m))
            keep = {ep.host_interface for ep in every if ep.container_id in live and ep.host_interface}
            # only bridge endpoints leave devices on the host
            report["veths"] = self.bridge.leftovers(
                [rec for rec in self.networks.with_driver() if rec.driver == self.bridge.name], keep)
            if dry_run:
                return {kind: found for kind, found in report.items() if found}
            stale = {r["container"] for r in report["endpoints"]} | {r["container"] for r in report["leases"]}
            stale |= {container for container, _ in self.ports.by_container()} - set(live)
            for cid in stale:
                self.detach(cid)
            self.ports.withdraw([m for m in self.ports.served() if m not in kept])
            self.bridge.remove_links(report["veths"])
            for cid, pid in live.items():
                if cid not in self.dns.serving() and any(self._dns_network(ep) for ep in self.endpoints.of(cid)):
                    try:
                        self._serve_dns(cid, f"/proc/{pid}/ns/net")
                    except OSError as exc:
                        log.warning("cannot restore DNS for %s: %s", cid, exc)
        return {kind: found for kind, found in report.items() if found}

    def adopt(self, request: ContainerNetworkRequest, settings: Mapping[str, Any], pid: int,
              dry_run: bool = False) -> Adoption:
        """Record again what the kernel still has for a running container the store forgot.

        After the state database was lost (or restored from an older snapshot)
        a rebuilt container record still says which endpoints, addresses and
        published ports it has (`settings`, its NetworkSettings), and its veths
        and nft elements still exist: they are recorded as they are (nothing is
        re-made, nothing removed), so reconciliation keeps them and no other
        container is given its address or port. A network the store does not
        know is left out and reported; a builtin network known under a new id
        (bridge, host, none) is matched by name, and the new id is returned for
        the engine's record.
        """
        cid = request.container_id
        adoption = Adoption()
        with self._lock:
            known = {ep.id for ep in self.endpoints.of(container=cid)}
            primary: Endpoint | None = None
            for name, view in (settings.get("Networks") or {}).items():
                eid = view.get("EndpointID")
                if not eid or eid in known:
                    if eid and primary is None:
                        primary = Endpoint.from_body({**view, "NetworkName": name})
                    continue
                rec = self.networks.find(view.get("NetworkID") or name) or self.networks.find(name)
                if rec is None:
                    adoption.found.append(f"endpoint on {name}: the network is unknown")
                    continue
                adoption.found.append(f"endpoint {eid[:12]} on {rec.name} ({view.get('IPAddress') or 'no address'})")
                if dry_run:
                    continue
                if view.get("NetworkID") != rec.id:
                    adoption.network_ids[name] = rec.id
                ep = Endpoint.from_body({**view, "NetworkID": rec.id, "Container": cid,
                                         "ContainerName": request.name, "NetworkName": rec.name,
                                         "Veth": "veth" + eid[:11] if rec.driver == self.bridge.name else "",
                                         "Interface": self._interface_with(pid, view.get("MacAddress") or "")})
                self.endpoints.replace(ep, [a for a in (ep.ipv4, ep.ipv6) if a])
                self.names.add(ep.body())
                primary = primary or ep
            mappings = self.ports.recorded(dict(settings.get("Ports") or {}), primary)
            if mappings and primary is not None and not dry_run and not self.ports.of(cid):
                self.ports.reserve(cid, primary.network_id, mappings, adopted=True)
                self.ports.apply(mappings)
                adoption.found.extend(f"port {m.host_ip}:{m.host_port}/{m.proto}" for m in mappings)
        return adoption

    @staticmethod
    def _interface_with(pid: int, mac: str) -> str:
        """The name of the interface with this MAC inside the container's network namespace ("" if none)."""
        if not mac or not pid:
            return ""
        try:
            with netlink.netns_socket(f"/proc/{pid}/ns/net") as cipr:
                for link in cipr.get_links():
                    if (link.get_attr("IFLA_ADDRESS") or "").lower() == mac.lower():
                        return str(link.get_attr("IFLA_IFNAME") or "")
        except OSError:
            pass
        return ""

    def replumb(self, cid: str, pid: int, dry_run: bool = False) -> builtins.list[str]:
        """Re-make the kernel objects of a running container's endpoints that were deleted behind our
        back (same name, MAC, address and routes): each network's driver restores its own."""
        found: builtins.list[str] = []
        with self._lock:
            for ep in self.endpoints.of(container=cid):
                rec = self.networks.find(ep.network_id)
                if rec is not None and rec.driver in self.drivers:
                    missing = self._driver(rec).restore(rec, [(ep, f"/proc/{pid}/ns/net")], dry_run=True)
                    if missing and not dry_run:
                        self._driver(rec).restore(rec, [(ep, f"/proc/{pid}/ns/net")])
                        interface = self._interface_with(pid, ep.mac_address)  # the name it has now
                        if interface and interface != ep.interface:
                            self.endpoints.update(replace(ep, interface=interface))
                    found += missing
        return found

    def prune_partial(self, cid: str, keep: set[str], dry_run: bool = False) -> builtins.list[str]:
        """Drop a live container's endpoints on networks outside `keep` (network ids), and its
        leases that no endpoint uses: what a crash in the middle of a connect leaves behind."""
        found: builtins.list[str] = []
        with self._lock:
            endpoints = self.endpoints.of(container=cid)
            for ep in endpoints:
                if ep.network_id not in keep:
                    found.append(f"endpoint {ep.id[:12]} on {ep.network_name}")
                    if not dry_run:
                        self.ports.unpublish(cid, ep.network_id)
                        self._drop_endpoint(ep)
            used = {(ep.network_id, address) for ep in endpoints if ep.network_id in keep
                    for address in (ep.ipv4, ep.ipv6)}
            for network, address, container in self.ipam.leases():
                if container == cid and (network, address) not in used:
                    found.append(f"lease {address} on {network[:12]}")
                    if not dry_run:
                        self.ipam.release(network, address)
        return found
