"""Container networking: networks, endpoints, published ports, name resolution.

The engine talks to one `NetworkManager`; everything below it is plumbing:
`ipam` (subnets, leases), `bridge` (netlink), `firewall/` (nftables), `ports`
(-p), `dns` (127.0.0.11) and `files` (/etc/hosts, resolv.conf, hostname).

Modes (HostConfig.NetworkMode, "default" meaning "bridge"):

- `bridge` or a user network name/id: a veth pair per network, host end in the
  network's Linux bridge, container end eth0 (eth1... for more networks)
  created directly inside the container's namespace, a random locally
  administered MAC unless given, an address from IPAM (or the static
  IPAMConfig.IPv4Address), lo up, default route via the first network's
  gateway (none for `internal` networks), ports published as nftables map
  elements, and on user networks DNS at 127.0.0.11.
- `none`: lo up, nothing else. `host`: nothing. `container:<id>`: nothing (the
  runtime joins the donor's namespace).

How the engine uses it (all methods are thread-safe; the engine holds a
per-container lock, so one container is never attached twice at once):

    net = NetworkManager(store, exec_root, bridge_name="coracle0", bip=None,
                         default_pools=[("10.200.0.0/14", 24)], firewall="nftables",
                         resolv_conf="/etc/resolv.conf", hosts_file="/etc/hosts")
    net.start()                       # daemon start-up: ip_forward, builtin networks
                                      # (bridge, host, none), bridges, nft table restored
    net.reconcile(live, dry_run)      # live = {container id: PID 1}; drops endpoints, leases,
                                      # ports, stray veths and nft elements of anything else,
                                      # re-opens DNS sockets of live containers; returns
                                      # {kind: [removed...]} for non-empty kinds ({} = consistent)
    net.validate(mode, host_config, endpoints_config)    # at create: raises clear errors
    settings = net.attach(rec, pid)   # at start, PID 1 held; returns NetworkSettings
    net.files(rec, settings)          # {"/etc/hosts": ..., "/etc/resolv.conf": ..., "/etc/hostname": ...}
    net.detach(cid)                   # at exit/stop/rm/failed start: idempotent, never raises
                                      # for already-gone things
    settings = net.connect(rec, pid or None, network_ref, endpoint_config)
    settings = net.disconnect(rec, network_ref, force)   # rec may also be a container id (-> None)
    net.rename(rec, old_name)         # rec already renamed: DNS answers to the new name only
    net.create(name, driver, ipam, internal, options, labels, enable_ipv6, check_duplicate)
        -> {"Id", "Warning"}; net.remove(ref); net.inspect(ref); net.list(filters);
    net.prune(filters) -> [names]; net.resolve(ref) -> record; net.close()

Errors: InvalidParameter (bad CIDR, gateway outside the subnet, bad port, static
address outside the subnet...), NotFound ("network foo not found"), Conflict (name
taken, overlapping subnet, "Bind for 0.0.0.0:8080 failed: port is already
allocated", address in use, network with active endpoints, builtin network).

Options honoured on create: com.docker.network.bridge.name, .bridge.enable_icc,
.bridge.enable_ip_masquerade, .driver.mtu; IPAM.Config Subnet, Gateway, IPRange
(one IPv4 config, and one IPv6 config with EnableIPv6). Unpublished container
ports are not reachable from outside the host (Docker 28's behaviour), published
ones are, with the real client address (no proxy process).

IPv6 (`network create --ipv6 [--subnet <v6>]`, user bridge networks only): the
network keeps its IPv4 subnet and gains an IPv6 one (given, or a /64 of
fdc0:ac1e::/48), gateway = first address, on the bridge. Containers get
GlobalIPv6Address (IPAMConfig.IPv6Address for `--ip6`), a default IPv6 route
via the gateway (none when internal), AAAA records, an /etc/hosts line;
published ports without HostIp are published on :: too; outbound traffic of
the subnet is masqueraded (NAT66, as Docker does for unique local subnets);
isolation, ICC and internal behave as for IPv4 (the `ip6 coracle` table). The
daemon's namespace gets net.ipv6.conf.all.forwarding=1 when such a network
exists.

`attach` joins, in order: the NetworkMode network, then every network named in
NetworkingConfig.EndpointsConfig, then every network already in
NetworkSettings.Networks (those `connect`ed while the container was stopped;
`connect` without a PID only records the network there). Ports are published on
the first network's address. On any failure everything made so far is undone
before the error propagates. `disconnect` also drops the network from
rec["NetworkingConfig"]["EndpointsConfig"] (the dict passed in is mutated; the
engine saves it) so that the next start does not bring it back.

State: network records are Store documents of kind "network" (Docker's inspect
shape plus a private "Coracle" key); endpoints, leases and published ports live
in module-owned tables (net_endpoints, net_leases, net_ports) whose keys make
double allocation impossible.

The manager acts on the network namespace of the thread that constructed it
(the daemon's own), whatever thread later calls it: it keeps a handle on that
namespace and opens every netlink/nftables socket inside it.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import secrets
import socket
import sqlite3
import threading
from datetime import datetime, UTC
from ipaddress import IPv4Address, IPv4Network
from typing import Any
from collections.abc import Callable

from coracle.errors import Conflict, InvalidParameter, NotFound
from coracle.faults import fault
from coracle.network import bridge, files, ports
from coracle.network.dns import Resolver, upstreams_from
from coracle.network.firewall import BridgeRules, FirewallDriver, driver
from coracle.network.ipam import (
    DEFAULT_POOLS,
    DEFAULT_POOLS6,
    IPAM,
    Network,
    check_assignable,
    parse_address,
    parse_subnet,
    pick_subnet,
    version_of,
)
from coracle.network.names import NameTable
from coracle.network.overlay import OverlayNetworks
from coracle.network.overlay_cluster import OverlayCluster
from coracle.network.ports import Mapping
from coracle.runtime.syscalls import netns
from coracle.store import Store

__all__ = ["NetworkManager"]

log = logging.getLogger(__name__)

KIND = "network"
BUILTIN = ("bridge", "host", "none")
DEFAULT_BRIDGE_SUBNET = "172.17.0.0/16"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")
OPT = "com.docker.network."
DEFAULT_MTU = 1500

SCHEMA = """
CREATE TABLE IF NOT EXISTS net_endpoints (
    id TEXT PRIMARY KEY,
    network TEXT NOT NULL,
    container TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (network, container)
);
CREATE INDEX IF NOT EXISTS net_endpoints_container ON net_endpoints(container);
CREATE TABLE IF NOT EXISTS net_ports (
    proto TEXT NOT NULL,
    host_ip TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    container TEXT NOT NULL,
    network TEXT NOT NULL,
    container_ip TEXT NOT NULL,
    container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port)
);
"""

# Endpoint bodies are Docker's EndpointSettings plus these private keys.
PRIVATE = ("Container", "ContainerName", "NetworkName", "Veth", "Interface")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _flag(options: dict[str, str], key: str, default: bool) -> bool:
    value = options.get(OPT + key)
    if value is None:
        return default
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0"):
        return False
    raise InvalidParameter(f"invalid value {value!r} for option {OPT + key}: expected true or false")


def _filter_values(filters: dict | None, key: str) -> list[str]:
    """Docker filters come as {"k": ["v"]} or the older {"k": {"v": true}}."""
    value = (filters or {}).get(key)
    if value is None:
        return []
    if isinstance(value, dict):
        return [k for k, v in value.items() if v]
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _labels_match(labels: dict[str, str], wanted: list[str], negate: bool = False) -> bool:
    for spec in wanted:
        key, eq, val = spec.partition("=")
        hit = key in labels and (not eq or labels[key] == val)
        if hit == negate:
            return False
    return True


class Subnet:
    """The IPv4 (or IPv6) configuration of a network, parsed once from its IPAM.Config."""

    def __init__(self, rec: dict[str, Any], version: int = 4) -> None:
        configs = rec["IPAM"].get("Config") or [{}]
        cfg = next((c for c in configs if version_of(c.get("Subnet", "")) == version), configs[0])
        self.network: Network = parse_subnet(cfg["Subnet"], version)
        self.gateway = parse_address(cfg["Gateway"], "gateway", version)
        self.ip_range: Network | None = parse_subnet(cfg["IPRange"], version) if cfg.get("IPRange") else None

    @staticmethod
    def v6(rec: dict[str, Any]) -> Subnet | None:
        """The IPv6 configuration of a network created with EnableIPv6, None for the others."""
        return Subnet(rec, 6) if rec.get("EnableIPv6") else None


class NetworkManager:
    """Networks and container endpoints of one daemon (see the module docstring)."""

    def __init__(self, store: Store, exec_root: str, *, bridge_name: str = "coracle0", bip: str | None = None,
                 default_pools: list[tuple[str, int]] | None = None, firewall: str = "nftables",
                 resolv_conf: str = "/etc/resolv.conf", hosts_file: str = "/etc/hosts",
                 cluster: OverlayCluster | None = None) -> None:
        self.store = store
        self.exec_root = exec_root
        self.bridge_name = bridge_name
        self.bip = bip
        self.pools = list(default_pools or DEFAULT_POOLS)
        self.resolv_conf = resolv_conf
        self.hosts_file = hosts_file
        self._ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.host_netns = f"/proc/self/fd/{self._ns_fd}"
        store.schema(SCHEMA)
        self.ipam = IPAM(store)
        self.firewall: FirewallDriver = driver(firewall, self.host_netns)
        self.names = NameTable()  # what the resolver answers: kept in step with every endpoint row below
        self.names.load(self._endpoints())
        self.dns = Resolver(self.names, self.host_netns, upstreams_from(resolv_conf))
        self._lock = threading.RLock()  # guards records, port choice, endpoint creation
        # overlay networks: only with a cluster store (coracled --cluster-store)
        self.overlay = OverlayNetworks(self, cluster) if cluster is not None else None

    def close(self) -> None:
        """Stop the resolver and drop the namespace handle (kernel state stays: live restore)."""
        self.dns.close()
        if self.overlay is not None:
            self.overlay.close()
        if self._ns_fd >= 0:
            os.close(self._ns_fd)
            self._ns_fd = -1

    # ----- start-up ----------------------------------------------------------

    def _host(self):  # type: ignore[no-untyped-def]
        return bridge.netns_socket(self.host_netns)

    def _host_sysctl(self, path: str, value: str) -> None:
        with netns(self.host_netns):
            bridge.sysctl(path, value)

    def start(self) -> None:
        """Builtin networks, bridges and the firewall table, as the store describes them."""
        with self._lock:
            self._host_sysctl("net/ipv4/ip_forward", "1")
            self._ensure_builtin()
            bridges = self._bridge_records()
            # rules first: a bridge gets route_localnet only once the loopback guard exists
            self.firewall.restore([self._rules(r) for r in bridges], self._mappings())
            for rec in bridges:
                self._plumb(rec)
        if self.overlay is not None:
            self.overlay.start()

    def _ensure_builtin(self) -> None:
        records = {r["Name"]: r for r in self.store.all(KIND) if r["Coracle"]["Builtin"]}
        for name, drv in (("host", "host"), ("none", "null")):
            if name not in records:
                self.store.put(KIND, (rec := self._record(name, drv, None, {}, {}, True))["Id"], rec)
        rec = records.get("bridge")
        if self.bip:
            iface = ipaddress.ip_interface(self.bip)
            if iface.version != 4 or iface.network.prefixlen > 30:
                raise InvalidParameter(f"invalid --bip {self.bip}: expected an IPv4 address/prefix")
            subnet, gateway = iface.network, iface.ip
        elif rec is not None:
            sub = Subnet(rec)
            subnet, gateway = sub.network, sub.gateway
        else:
            subnet = IPv4Network(DEFAULT_BRIDGE_SUBNET)
            if any(subnet.overlaps(t) for t in self._taken()):
                subnet = pick_subnet(self.pools, self._taken())
            gateway = next(subnet.hosts())
        ipam = {"Driver": "default", "Options": None,
                "Config": [{"Subnet": str(subnet), "Gateway": str(gateway)}]}
        options = {OPT + "bridge.default_bridge": "true", OPT + "bridge.enable_icc": "true",
                   OPT + "bridge.enable_ip_masquerade": "true", OPT + "bridge.host_binding_ipv4": "0.0.0.0",
                   OPT + "bridge.name": self.bridge_name, OPT + "driver.mtu": str(DEFAULT_MTU)}
        fresh = self._record("bridge", "bridge", ipam, options, {}, True)
        fresh["Coracle"]["Bridge"] = self.bridge_name
        if rec is not None:
            fresh["Id"], fresh["Created"] = rec["Id"], rec["Created"]
            if rec["Coracle"]["Bridge"] != self.bridge_name or rec["IPAM"] != ipam:
                with self._host() as ipr:
                    bridge.delete_link(ipr, rec["Coracle"]["Bridge"])
                self.firewall.remove_network(self._rules(rec))
        self.store.put(KIND, fresh["Id"], fresh)

    def _record(self, name: str, drv: str, ipam: dict | None, options: dict, labels: dict, builtin: bool,
                internal: bool = False, enable_ipv6: bool = False) -> dict[str, Any]:
        """A network record in Docker's inspect shape, plus our private "Coracle" part."""
        nid = secrets.token_hex(32)
        opts = {k: str(v) for k, v in options.items()}
        return {
            "Name": name, "Id": nid, "Created": _now(), "Scope": "local", "Driver": drv, "EnableIPv4": True,
            "EnableIPv6": enable_ipv6,
            "IPAM": ipam or {"Driver": "default", "Options": None, "Config": []},
            "Internal": internal, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Options": opts, "Labels": dict(labels),
            "Coracle": {"Builtin": builtin, "Bridge": opts.get(OPT + "bridge.name") or f"br-{nid[:12]}",
                        "ICC": _flag(opts, "bridge.enable_icc", True),
                        "Masquerade": _flag(opts, "bridge.enable_ip_masquerade", True),
                        "MTU": int(opts.get(OPT + "driver.mtu") or DEFAULT_MTU)},
        }

    def _plumb(self, rec: dict[str, Any]) -> None:
        """The bridge device of a network: created or adopted, addressed, up, route_localnet as the firewall needs."""
        if rec["Driver"] == "overlay":
            if self.overlay is None:
                log.warning("overlay network %s left down: this daemon has no --cluster-store", rec["Name"])
            else:
                self.overlay.restore(rec)
            return
        sub, sub6 = Subnet(rec), Subnet.v6(rec)
        name = rec["Coracle"]["Bridge"]
        with self._host() as ipr:
            bridge.ensure_bridge(ipr, name, str(sub.gateway), sub.network.prefixlen, rec["Coracle"]["MTU"])
        # DNAT of 127.0.0.1:port to a container needs loopback-sourced packets routed into the bridge;
        # without that DNAT the setting would only open the host's loopback to the bridge
        self._host_sysctl(f"net/ipv4/conf/{name}/route_localnet", "1" if self.firewall.localhost_dnat else "0")
        if sub6 is not None:
            self._host_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0")
            # no duplicate detection of the link-local address made at link-up: while it is tentative the
            # kernel sends no neighbour solicitation for forwarded packets (published ports lose packets)
            self._host_sysctl(f"net/ipv6/conf/{name}/accept_dad", "0")
            self._host_sysctl("net/ipv6/conf/all/forwarding", "1")
        with self._host() as ipr:
            if sub6 is not None:
                bridge.ensure_address(ipr, name, str(sub6.gateway), sub6.network.prefixlen)
            bridge.link_up(ipr, name)

    def _bridge_records(self) -> list[dict[str, Any]]:
        return [r for r in self.store.all(KIND) if r["Driver"] in ("bridge", "overlay")]

    def overlay_records(self) -> list[dict[str, Any]]:
        return [r for r in self.store.all(KIND) if r["Driver"] == "overlay"]

    @property
    def lock(self) -> threading.RLock:
        """The manager's lock: overlay changes from the cluster watch take it like API calls do."""
        return self._lock

    def rules(self, rec: dict[str, Any]) -> BridgeRules:
        return self._rules(rec)

    def endpoints_of(self, container: str | None = None, network: str | None = None) -> list[dict[str, Any]]:
        return self._endpoints(container, network)

    def check_overlay_subnet(self, subnet: Network) -> None:
        """A subnet asked for an overlay network: assignable, and no local network's."""
        self._chosen_subnet(str(subnet), 4)
        for other in self._bridge_records():
            if subnet.overlaps(Subnet(other).network):
                raise Conflict(f"invalid pool request: Pool overlaps with other one on this address space "
                               f"({subnet} overlaps network {other['Name']})")

    def _rules(self, rec: dict[str, Any]) -> BridgeRules:
        c = rec["Coracle"]
        sub6 = Subnet.v6(rec)
        return BridgeRules(c["Bridge"], str(Subnet(rec).network), rec["Internal"], c["ICC"], c["Masquerade"],
                           str(sub6.network) if sub6 else None)

    def _taken(self, ignore: set[str] | None = None, version: int = 4) -> list[Network]:
        """Subnets in use: our networks' and the host's routes (except routes through our bridges)."""
        every = self._bridge_records()
        records = [r for r in every if not ignore or r["Id"] not in ignore]
        if version == 4:
            out = [Subnet(r).network for r in records]
        else:
            out = [sub.network for sub in map(Subnet.v6, records) if sub is not None]
        ours = {r["Coracle"]["Bridge"] for r in every}
        with netns(self.host_netns):
            found = bridge.routes(socket.AF_INET6 if version == 6 else socket.AF_INET)
        out += [ipaddress.ip_network(f"{dst}/{length}", strict=False)
                for dst, length, iface in found if length and iface not in ours]
        return out

    # ----- reconciliation ----------------------------------------------------

    def reconcile(self, live: dict[str, int], dry_run: bool = False) -> dict[str, list]:
        """Drop endpoints, leases, ports, veths and nft elements of containers not in `live`.

        `live` maps the id of every running container to its PID 1. DNS sockets of
        live containers on user networks are re-opened (they die with the daemon).
        Returns what was (or, with dry_run, would be) removed, by kind (endpoints,
        leases, ports, veths, nft_elements); kinds with nothing to remove are left
        out, so an empty dict means everything was consistent.
        """
        report: dict[str, list] = {"endpoints": [], "leases": [], "ports": [], "veths": [], "nft_elements": []}
        if self.overlay is not None:
            report["overlay"] = self.overlay.check(dry_run)
        with self._lock:
            for ep in self._endpoints():
                if ep["Container"] not in live:
                    report["endpoints"].append({"container": ep["Container"], "network": ep["NetworkName"],
                                                "endpoint": ep["EndpointID"]})
            for network, address, container in self.ipam.leases():
                if container not in live:
                    report["leases"].append({"network": network, "address": address, "container": container})
            kept = {}
            for row in self.store.execute("SELECT proto, host_ip, host_port, container, container_ip, "
                                          "container_port FROM net_ports"):
                m = Mapping(row[0], row[1], row[2], row[4], row[5])
                if row[3] in live:
                    kept[m] = row[3]
                else:
                    report["ports"].append(f"{m.host_ip}:{m.host_port}/{m.proto} -> {m.container_ip}:{m.container_port}")
            for m in self.firewall.mappings():
                if m not in kept:
                    report["nft_elements"].append(f"{m.host_ip}:{m.host_port}/{m.proto} -> {m.container_ip}:{m.container_port}")
            keep_veths = {ep["Veth"] for ep in self._endpoints() if ep["Container"] in live and ep.get("Veth")}
            keep_veths |= {r["Coracle"].get("VXLAN") for r in self.overlay_records()}
            with self._host() as ipr:
                for rec in self._bridge_records():
                    for name in bridge.ports_of(ipr, rec["Coracle"]["Bridge"]):
                        if name not in keep_veths:
                            report["veths"].append(name)
            if dry_run:
                return {kind: found for kind, found in report.items() if found}
            stale = {r["container"] for r in report["endpoints"]} | {r["container"] for r in report["leases"]}
            stale |= {row[0] for row in self.store.execute("SELECT container FROM net_ports")} - set(live)
            for cid in stale:
                self.detach(cid)
            self.firewall.remove_mappings([m for m in self.firewall.mappings() if m not in kept])
            with self._host() as ipr:
                for name in report["veths"]:
                    bridge.delete_link(ipr, name)
            for cid, pid in live.items():
                if cid not in self.dns.serving() and self._user_endpoints(cid):
                    try:
                        self._serve_dns(cid, pid)
                    except OSError as exc:
                        log.warning("cannot restore DNS for %s: %s", cid, exc)
        return {kind: found for kind, found in report.items() if found}

    def adopt(self, container: dict[str, Any], dry_run: bool = False) -> list[str]:
        """Record again what the kernel still has for a running container the store forgot.

        After the state database was lost (or restored from an older snapshot)
        a rebuilt container record still says which endpoints, addresses and
        published ports it has, and its veths and nft elements still exist:
        they are recorded as they are (nothing is re-made, nothing removed), so
        reconciliation keeps them and no other container is given its address
        or port. A network the store does not know is left out and reported;
        a builtin network known under a new id (bridge, host, none) is matched
        by name and the record's NetworkID is updated in place.
        """
        cid, pid = container["Id"], container["State"]["Pid"]
        settings = container.get("NetworkSettings") or {}
        found: list[str] = []
        with self._lock:
            known = {ep["EndpointID"] for ep in self._endpoints(container=cid)}
            primary = None
            for name, view in (settings.get("Networks") or {}).items():
                eid = view.get("EndpointID")
                if not eid or eid in known:
                    primary = primary or (view if eid else None)
                    continue
                try:
                    rec = self.resolve(view.get("NetworkID") or name)
                except NotFound:
                    try:
                        rec = self.resolve(name)
                    except NotFound:
                        found.append(f"endpoint on {name}: the network is unknown")
                        continue
                found.append(f"endpoint {eid[:12]} on {rec['Name']} ({view.get('IPAddress') or 'no address'})")
                if dry_run:
                    continue
                view["NetworkID"] = rec["Id"]
                ep = {**view, "Container": cid, "ContainerName": container["Name"].lstrip("/"),
                      "NetworkName": rec["Name"], "Veth": "veth" + eid[:11] if rec["Driver"] == "bridge" else "",
                      "Interface": self._interface_with(pid, view.get("MacAddress") or "")}
                with self.store.tx() as db:
                    db.execute("DELETE FROM net_endpoints WHERE network = ? AND container = ?", (rec["Id"], cid))
                    db.execute("INSERT INTO net_endpoints(id, network, container, body) VALUES (?, ?, ?, ?)",
                               (eid, rec["Id"], cid, json.dumps(ep)))
                    for key in ("IPAddress", "GlobalIPv6Address"):
                        if ep.get(key):
                            db.execute("INSERT OR IGNORE INTO net_leases(network, address, container) VALUES (?, ?, ?)",
                                       (rec["Id"], ep[key], cid))
                primary = primary or ep
            mappings = self._recorded_ports(settings.get("Ports") or {}, primary)
            recorded = self.store.execute("SELECT 1 FROM net_ports WHERE container = ?", (cid,))
            if mappings and not dry_run and not recorded:
                with self.store.tx() as db:
                    for m in mappings:
                        db.execute("INSERT OR IGNORE INTO net_ports VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   (m.proto, m.host_ip, m.host_port, cid, primary["NetworkID"],  # type: ignore[index]
                                    m.container_ip, m.container_port))
                self.firewall.add_mappings(mappings)
                found.extend(f"port {m.host_ip}:{m.host_port}/{m.proto}" for m in mappings)
        return found

    @staticmethod
    def _recorded_ports(ports_view: dict[str, Any], ep: dict[str, Any] | None) -> list[Mapping]:
        """Docker's NetworkSettings.Ports back into mappings to the endpoint's addresses."""
        if ep is None:
            return []
        out = []
        for key, bindings in ports_view.items():
            port, _, proto = key.partition("/")
            for b in bindings or []:
                host_ip = b.get("HostIp") or "0.0.0.0"
                target = ep.get("GlobalIPv6Address") if ":" in host_ip else ep.get("IPAddress")
                if target and str(b.get("HostPort") or "").isdigit():
                    out.append(Mapping(proto or "tcp", host_ip, int(b["HostPort"]), target, int(port)))
        return out

    @staticmethod
    def _interface_with(pid: int, mac: str) -> str:
        """The name of the interface with this MAC inside the container's network namespace ("" if none)."""
        if not mac or not pid:
            return ""
        try:
            with bridge.netns_socket(f"/proc/{pid}/ns/net") as cipr:
                for link in cipr.get_links():
                    if (link.get_attr("IFLA_ADDRESS") or "").lower() == mac.lower():
                        return link.get_attr("IFLA_IFNAME") or ""
        except OSError:
            pass
        return ""

    # ----- networks ----------------------------------------------------------

    def prune_partial(self, cid: str, keep: set[str], dry_run: bool = False) -> list[str]:
        """Drop a live container's endpoints on networks outside `keep` (network ids), and its
        leases that no endpoint uses: what a crash in the middle of a connect leaves behind."""
        found: list[str] = []
        with self._lock:
            endpoints = self._endpoints(container=cid)
            for ep in endpoints:
                if ep["NetworkID"] not in keep:
                    found.append(f"endpoint {ep['EndpointID'][:12]} on {ep['NetworkName']}")
                    if not dry_run:
                        rows = self.store.execute("SELECT proto, host_ip, host_port, container_ip, container_port "
                                                  "FROM net_ports WHERE container = ? AND network = ?",
                                                  (cid, ep["NetworkID"]))
                        if rows:
                            self.firewall.remove_mappings([Mapping(*r) for r in rows])
                            self.store.execute("DELETE FROM net_ports WHERE container = ? AND network = ?",
                                               (cid, ep["NetworkID"]))
                        self._drop_endpoint(ep)
            used = {(ep["NetworkID"], ep.get(key)) for ep in endpoints if ep["NetworkID"] in keep
                    for key in ("IPAddress", "GlobalIPv6Address")}
            for network, address, container in self.ipam.leases():
                if container == cid and (network, address) not in used:
                    found.append(f"lease {address} on {network[:12]}")
                    if not dry_run:
                        self.ipam.release(network, address)
        return found

    def resolve(self, ref: str) -> dict[str, Any]:
        """A network record by full id, name, or unique id prefix ("default" is the default bridge)."""
        records = self.store.all(KIND)
        for key in ("Id", "Name"):
            for rec in records:
                if rec[key] == ref:
                    return rec
        if ref == "default":
            return self.resolve("bridge")
        matches = [r for r in records if ref and r["Id"].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidParameter(f"network {ref} is ambiguous ({len(matches)} matches found based on ID prefix)")
        raise NotFound(f"network {ref} not found")

    def create(self, name: str, driver: str = "bridge", ipam: dict | None = None, internal: bool = False,
               options: dict | None = None, labels: dict | None = None, enable_ipv6: bool = False,
               check_duplicate: bool = True, **_ignored: Any) -> dict[str, str]:
        """`docker network create`: a bridge network; nothing is left behind on error."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidParameter(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if driver in ("host", "null", "none"):
            raise Conflict(f'only one instance of "{driver}" network is allowed')
        if driver == "overlay":
            return self._create_overlay(name, ipam or {}, internal, options or {}, labels or {}, _ignored)
        if driver != "bridge":
            raise InvalidParameter(f"network driver {driver!r} is not supported (bridge and overlay are)")
        options = {k: str(v) for k, v in (options or {}).items()}
        ipam = ipam or {}
        if (ipam.get("Driver") or "default") != "default":
            raise InvalidParameter(f"IPAM driver {ipam['Driver']!r} is not supported (default is)")
        configs = ipam.get("Config") or []
        by_version: dict[int, dict] = {}
        for c in configs:
            version = version_of(c.get("Subnet") or c.get("Gateway") or c.get("IPRange") or "")
            if version in by_version:
                raise InvalidParameter(f"only one IPv{version} subnet per network is supported")
            by_version[version] = c
        if 6 in by_version and not enable_ipv6:
            raise InvalidParameter(f"IPv6 subnet {by_version[6].get('Subnet') or ''} given but IPv6 is not enabled "
                                   "on the network (use --ipv6)")
        if enable_ipv6 and not os.path.isdir("/proc/sys/net/ipv6"):
            raise InvalidParameter("IPv6 networks need a kernel with IPv6 enabled")
        cfg = by_version.get(4, {})
        mtu = options.get(OPT + "driver.mtu")
        if mtu is not None and not (str(mtu).isdigit() and 68 <= int(mtu) <= 65535):
            raise InvalidParameter(f"invalid MTU {mtu!r}: expected 68-65535")
        with self._lock:
            if any(r["Name"] == name for r in self.store.all(KIND)):
                raise Conflict(f"network with name {name} already exists")
            if cfg.get("Subnet"):
                subnet = self._chosen_subnet(cfg["Subnet"], 4)
                for other in self._bridge_records():
                    if subnet.overlaps(Subnet(other).network):
                        raise Conflict(f"invalid pool request: Pool overlaps with other one on this address "
                                       f"space ({subnet} overlaps network {other['Name']})")
            else:
                if cfg.get("Gateway") or cfg.get("IPRange"):
                    raise InvalidParameter("a gateway or an IP range needs a subnet")
                subnet = pick_subnet(self.pools, self._taken())
            gateway = parse_address(cfg["Gateway"], "gateway") if cfg.get("Gateway") else next(subnet.hosts())
            if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
                raise InvalidParameter(f"invalid gateway {gateway}: not a host address of subnet {subnet}")
            config = {"Subnet": str(subnet), "Gateway": str(gateway)}
            if cfg.get("IPRange"):
                ip_range = parse_subnet(cfg["IPRange"])
                if not ip_range.subnet_of(subnet):
                    raise InvalidParameter(f"invalid ip-range {ip_range}: not inside subnet {subnet}")
                config["IPRange"] = str(ip_range)
            ipam_configs = [config]
            if enable_ipv6:
                ipam_configs.append(self._ipv6_config(by_version.get(6, {})))
            rec = self._record(name, "bridge", {"Driver": "default", "Options": ipam.get("Options") or {},
                                                "Config": ipam_configs}, options, labels or {}, False,
                               bool(internal), bool(enable_ipv6))
            dev = rec["Coracle"]["Bridge"]
            if len(dev) > 15 or not re.match(r"^[a-zA-Z0-9_.-]+$", dev):
                raise InvalidParameter(f"invalid bridge name {dev!r}: at most 15 characters [a-zA-Z0-9_.-]")
            if any(r["Coracle"]["Bridge"] == dev for r in self.store.all(KIND)):
                raise Conflict(f"bridge name {dev} is already used by another network")
            with self._host() as ipr:
                if bridge.index(ipr, dev) is not None:
                    raise Conflict(f"a device named {dev} already exists on the host")
            try:
                self._plumb(rec)
                self.firewall.add_network(self._rules(rec))
                self.store.put(KIND, rec["Id"], rec)
            except BaseException:
                self.firewall.remove_network(self._rules(rec))
                with self._host() as ipr:
                    bridge.delete_link(ipr, dev)
                raise
        return {"Id": rec["Id"], "Warning": ""}

    def _create_overlay(self, name: str, ipam: dict[str, Any], internal: bool, options: dict[str, Any],
                        labels: dict[str, Any], extra: dict[str, Any]) -> dict[str, str]:
        if self.overlay is None:
            raise InvalidParameter("overlay networks need a cluster store: start coracled with "
                                   "--cluster-store etcd://IP:PORT --cluster-advertise IP")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidParameter(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if (ipam.get("Driver") or "default") != "default":
            raise InvalidParameter(f"IPAM driver {ipam['Driver']!r} is not supported (default is)")
        with self._lock:
            if any(r["Name"] == name for r in self.store.all(KIND)):
                raise Conflict(f"network with name {name} already exists")
            nid = self.overlay.create(name, ipam, bool(internal), bool(extra.get("attachable")),
                                      {k: str(v) for k, v in options.items()}, {k: str(v) for k, v in labels.items()})
        return {"Id": nid, "Warning": ""}

    def _chosen_subnet(self, text: str, version: int) -> Network:
        """A subnet given by the user: well formed, no special-purpose block, none of the host's own
        addresses (a bridge holding one would steal the host's traffic for it)."""
        subnet = parse_subnet(text, version)
        check_assignable(subnet)
        with self._host() as ipr:
            ours = {bridge.index(ipr, r["Coracle"]["Bridge"]) for r in self._bridge_records()}  # overlap: Conflict
            for address, idx in bridge.addresses(ipr, socket.AF_INET6 if version == 6 else socket.AF_INET):
                if idx not in ours and ipaddress.ip_address(address) in subnet:
                    name = ipr.get_links(idx)[0].get_attr("IFLA_IFNAME")
                    raise InvalidParameter(f"invalid subnet {subnet}: it contains {address}, an address of this "
                                           f"host (on {name})")
        return subnet

    def _ipv6_config(self, cfg: dict[str, Any]) -> dict[str, str]:
        """The IPv6 IPAM config of a new network: checked like the IPv4 one, or picked from the ULA pool."""
        if cfg.get("Subnet"):
            subnet = self._chosen_subnet(cfg["Subnet"], 6)
            for other in self._bridge_records():
                sub6 = Subnet.v6(other)
                if sub6 is not None and subnet.overlaps(sub6.network):
                    raise Conflict(f"invalid pool request: Pool overlaps with other one on this address "
                                   f"space ({subnet} overlaps network {other['Name']})")
        else:
            if cfg.get("Gateway") or cfg.get("IPRange"):
                raise InvalidParameter("an IPv6 gateway or IP range needs an IPv6 subnet")
            subnet = pick_subnet(DEFAULT_POOLS6, self._taken(version=6), 6)
        gateway = parse_address(cfg["Gateway"], "gateway", 6) if cfg.get("Gateway") else subnet[1]
        if gateway not in subnet or gateway == subnet.network_address:
            raise InvalidParameter(f"invalid gateway {gateway}: not a host address of subnet {subnet}")
        config = {"Subnet": str(subnet), "Gateway": str(gateway)}
        if cfg.get("IPRange"):
            ip_range = parse_subnet(cfg["IPRange"], 6)
            if not ip_range.subnet_of(subnet):
                raise InvalidParameter(f"invalid ip-range {ip_range}: not inside subnet {subnet}")
            config["IPRange"] = str(ip_range)
        return config

    def remove(self, ref: str) -> None:
        """`docker network rm`: refused for builtin networks and while endpoints are attached."""
        with self._lock:
            rec = self.resolve(ref)
            if rec["Coracle"]["Builtin"]:
                raise Conflict(f"{rec['Name']} is a pre-defined network and cannot be removed")
            if self._endpoints(network=rec["Id"]):
                raise Conflict(f"error while removing network: network {rec['Name']} id {rec['Id']} "
                               "has active endpoints")
            if rec["Driver"] == "overlay" and self.overlay is not None:
                self.overlay.remove(rec)
                return
            self.firewall.remove_network(self._rules(rec))
            with self._host() as ipr:
                bridge.delete_link(ipr, rec["Coracle"]["Bridge"])
            self.ipam.release_network(rec["Id"])
            self.store.delete(KIND, rec["Id"])

    def inspect(self, ref: str) -> dict[str, Any]:
        return self._view(self.resolve(ref))

    def _view(self, rec: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in rec.items() if k != "Coracle"}
        out["Containers"] = {
            ep["Container"]: {"Name": ep["ContainerName"], "EndpointID": ep["EndpointID"],
                              "MacAddress": ep["MacAddress"],
                              "IPv4Address": f"{ep['IPAddress']}/{ep['IPPrefixLen']}" if ep["IPAddress"] else "",
                              "IPv6Address": f"{ep['GlobalIPv6Address']}/{ep['GlobalIPv6PrefixLen']}"
                              if ep.get("GlobalIPv6Address") else ""}
            for ep in self._endpoints(network=rec["Id"])
        }
        return out

    def list(self, filters: dict | None = None) -> list[dict[str, Any]]:
        """`docker network ls` with Docker's filters: name, id, driver, label, type, scope, dangling."""
        out = []
        names, ids = _filter_values(filters, "name"), _filter_values(filters, "id")
        drivers, labels = _filter_values(filters, "driver"), _filter_values(filters, "label")
        types, scopes = _filter_values(filters, "type"), _filter_values(filters, "scope")
        dangling = _filter_values(filters, "dangling")
        for rec in self.store.all(KIND):
            if names and not any(n in rec["Name"] for n in names):
                continue
            if ids and not any(rec["Id"].startswith(i) for i in ids):
                continue
            if drivers and rec["Driver"] not in drivers:
                continue
            if labels and not _labels_match(rec["Labels"], labels):
                continue
            if types and ("builtin" if rec["Coracle"]["Builtin"] else "custom") not in types:
                continue
            if scopes and rec.get("Scope", "local") not in scopes:
                continue
            view = self._view(rec)
            if dangling and (dangling[0].lower() in ("true", "1")) != (not view["Containers"]):
                continue
            out.append(view)
        return out

    def prune(self, filters: dict | None = None) -> list[str]:
        """Remove custom networks without endpoints (label / label! filters); returns their names."""
        removed = []
        with self._lock:
            for rec in self.store.all(KIND):
                if rec["Coracle"]["Builtin"] or rec["Driver"] == "overlay" or self._endpoints(network=rec["Id"]):
                    continue
                if not _labels_match(rec["Labels"], _filter_values(filters, "label")):
                    continue
                if not _labels_match(rec["Labels"], _filter_values(filters, "label!"), negate=True):
                    continue
                self.remove(rec["Id"])
                removed.append(rec["Name"])
        return removed

    # ----- endpoints (store) -------------------------------------------------

    def _endpoints(self, container: str | None = None, network: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT body FROM net_endpoints", []
        where = []
        if container is not None:
            where.append("container = ?")
            args.append(container)
        if network is not None:
            where.append("network = ?")
            args.append(network)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [json.loads(r[0]) for r in self.store.execute(sql + " ORDER BY rowid", tuple(args))]

    def _user_endpoints(self, cid: str) -> list[dict[str, Any]]:
        """Endpoints of the container on user-defined networks (those with DNS)."""
        builtin = {r["Id"] for r in self.store.all(KIND) if r["Coracle"]["Builtin"]}
        return [ep for ep in self._endpoints(container=cid) if ep["NetworkID"] not in builtin]

    def _mappings(self) -> list[Mapping]:
        return [Mapping(*row) for row in self.store.execute(
            "SELECT proto, host_ip, host_port, container_ip, container_port FROM net_ports")]

    # ----- validation --------------------------------------------------------

    def validate(self, mode: str, host_config: dict[str, Any], endpoints: dict[str, Any]) -> None:
        """Create-time checks of a container's network settings; raises with Docker's wording."""
        mode = mode or "bridge"
        hc = host_config or {}
        endpoints = endpoints or {}
        if mode.startswith("container:"):
            if hc.get("PortBindings") or hc.get("PublishAllPorts"):
                raise InvalidParameter("conflicting options: port publishing and the container type network mode")
            if hc.get("Dns") or hc.get("DnsSearch") or hc.get("DnsOptions"):
                raise InvalidParameter("conflicting options: dns and the network mode")
            if hc.get("ExtraHosts"):
                raise InvalidParameter("conflicting options: custom host-to-IP mapping and the network mode")
            if endpoints:
                raise InvalidParameter("container sharing network namespace with another container or host "
                                       "cannot be connected to any other network")
            return
        files.extra_hosts(hc.get("ExtraHosts"), "127.0.0.1")
        ports.requests(hc.get("PortBindings"), None, False)
        if mode in ("host", "none"):
            for ref in endpoints:
                if self.resolve(ref)["Name"] != mode:
                    raise InvalidParameter(f"container cannot be connected to network {ref} in {mode} mode")
            return
        self.resolve(mode)
        for ref, cfg in endpoints.items():
            self._check_endpoint(self.resolve(ref), cfg or {})

    def _check_endpoint(self, rec: dict[str, Any], cfg: dict[str, Any]) -> None:
        if rec["Driver"] not in ("bridge", "overlay"):
            raise InvalidParameter(f"container cannot be connected to the {rec['Name']} network this way")
        wanted = (cfg.get("IPAMConfig") or {}).get("IPv4Address")
        if wanted:
            if rec["Coracle"]["Builtin"]:
                raise InvalidParameter("user specified IP address is supported on user defined networks only")
            addr = parse_address(wanted, "IPv4 address")
            sub = Subnet(rec)
            if addr not in sub.network or addr in (sub.network.network_address, sub.network.broadcast_address):
                raise InvalidParameter(f"invalid IPv4 address {addr}: not in subnet {sub.network} of network "
                                       f"{rec['Name']}")
            if addr == sub.gateway:
                raise InvalidParameter(f"invalid IPv4 address {addr}: it is the gateway of network {rec['Name']}")
        wanted6 = (cfg.get("IPAMConfig") or {}).get("IPv6Address")
        if wanted6:
            sub6 = Subnet.v6(rec)
            if sub6 is None:
                raise InvalidParameter(f"invalid IPv6 address {wanted6}: network {rec['Name']} has no IPv6 "
                                       "(create it with --ipv6)")
            addr6 = parse_address(wanted6, "IPv6 address", 6)
            if addr6 not in sub6.network or addr6 == sub6.network.network_address:
                raise InvalidParameter(f"invalid IPv6 address {addr6}: not in subnet {sub6.network} of network "
                                       f"{rec['Name']}")
            if addr6 == sub6.gateway:
                raise InvalidParameter(f"invalid IPv6 address {addr6}: it is the gateway of network {rec['Name']}")
        if cfg.get("Aliases") and rec["Coracle"]["Builtin"]:
            raise InvalidParameter("network-scoped alias is supported only for containers in user defined networks")
        mac = cfg.get("MacAddress")
        if mac and not MAC_RE.match(mac):
            raise InvalidParameter(f"invalid MAC address {mac!r}")

    # ----- attach / detach -----------------------------------------------------

    def _wanted(self, container: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(network record, endpoint config) to join, primary network first, without duplicates."""
        mode = container["HostConfig"].get("NetworkMode") or "bridge"
        mode = "bridge" if mode == "default" else mode
        configs: list[tuple[str, dict]] = [(mode, {})]
        configs += list(((container.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}).items())
        configs += list(((container.get("NetworkSettings") or {}).get("Networks") or {}).items())
        plan: dict[str, tuple[dict, dict]] = {}
        for ref, cfg in configs:
            rec = self.resolve(ref)
            if rec["Id"] in plan:
                if not plan[rec["Id"]][1] and cfg:
                    plan[rec["Id"]] = (rec, cfg)
                continue
            plan[rec["Id"]] = (rec, cfg or {})
        return list(plan.values())

    def attach(self, container: dict[str, Any], pid: int) -> dict[str, Any]:
        """Wire the held container into its networks; returns Docker's NetworkSettings."""
        cid = container["Id"]
        mode = container["HostConfig"].get("NetworkMode") or "bridge"
        mode = "bridge" if mode == "default" else mode
        ns_path = f"/proc/{pid}/ns/net"
        if mode.startswith("container:"):
            return self._settings(container, [], [], "")
        undo: list[Callable[[], None]] = []
        try:
            if mode in ("host", "none"):
                if mode == "none":
                    with bridge.netns_socket(ns_path) as ipr:
                        bridge.lo_up(ipr)
                endpoints = [self._record_endpoint(container, self.resolve(mode), {}, None, undo)]
                return self._settings(container, endpoints, [], ns_path if mode == "none" else "")
            plan = self._wanted(container)
            endpoints = [self._join(container, pid, rec, cfg, undo, first=(i == 0))
                         for i, (rec, cfg) in enumerate(plan)]
            primary_rec = plan[0][0]
            mappings = [] if primary_rec["Internal"] else self._publish(container, endpoints[0], undo)
            if self._user_endpoints(cid):
                self._serve_dns(cid, pid, container)
                undo.append(lambda: self.dns.stop(cid))
            return self._settings(container, endpoints, mappings, ns_path)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("undo of a failed attach of %s", cid)
            raise

    def _serve_dns(self, cid: str, pid: int, container: dict[str, Any] | None = None) -> None:
        dns = ((container or {}).get("HostConfig") or {}).get("Dns") or []
        self.dns.serve(cid, f"/proc/{pid}/ns/net", [d for d in dns if ":" not in d])

    def _record_endpoint(self, container: dict[str, Any], rec: dict[str, Any], body: dict[str, Any],
                         address: IPv4Address | None, undo: list[Callable[[], None]]) -> dict[str, Any]:
        """Insert the endpoint row (the reservation other threads see) and register its undo."""
        cid = container["Id"]
        eid = secrets.token_hex(32)
        name = container.get("Name", "").lstrip("/")
        ep = {"IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "", "DriverOpts": None,
              "NetworkID": rec["Id"], "EndpointID": eid, "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
              "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": None,
              "Container": cid, "ContainerName": name, "NetworkName": rec["Name"], "Veth": "", "Interface": "",
              **body}
        try:
            self.store.execute("INSERT INTO net_endpoints(id, network, container, body) VALUES (?, ?, ?, ?)",
                               (eid, rec["Id"], cid, json.dumps(ep)))
        except sqlite3.IntegrityError:
            if address is not None:
                self.ipam.release(rec["Id"], str(address))
            raise Conflict(f"endpoint with name {name} already exists in network {rec['Name']}") from None
        self.names.add(ep)
        undo.append(lambda: self._drop_endpoint(ep))
        return ep

    def _drop_endpoint(self, ep: dict[str, Any]) -> None:
        """Remove an endpoint's veth, lease and row; parts already gone are fine."""
        if ep.get("Veth"):
            with self._host() as ipr:
                bridge.delete_link(ipr, ep["Veth"])
        if self.overlay is not None and (self.store.get(KIND, ep["NetworkID"]) or {}).get("Driver") == "overlay":
            self.overlay.drop(ep)
        for key in ("IPAddress", "GlobalIPv6Address"):
            if ep.get(key):
                self.ipam.release(ep["NetworkID"], ep[key])
        self.store.execute("DELETE FROM net_endpoints WHERE id = ?", (ep["EndpointID"],))
        self.names.remove(ep)

    def _join(self, container: dict[str, Any], pid: int, rec: dict[str, Any], cfg: dict[str, Any],
              undo: list[Callable[[], None]], first: bool) -> dict[str, Any]:
        """One network: lease, endpoint row, veth pair, address and routes inside the container."""
        self._check_endpoint(rec, cfg)
        cid = container["Id"]
        sub = Subnet(rec)
        wanted = (cfg.get("IPAMConfig") or {}).get("IPv4Address")
        if rec["Driver"] == "overlay":
            if self.overlay is None:
                raise InvalidParameter(f"network {rec['Name']} is an overlay network: this daemon has no cluster store")
            address = self.overlay.allocate(rec, cid, parse_address(wanted, "IPv4 address") if wanted else None)
        else:
            address = self.ipam.allocate(rec["Id"], sub.network, sub.gateway, cid, sub.ip_range,
                                         parse_address(wanted, "IPv4 address") if wanted else None)
        sub6, address6 = Subnet.v6(rec), None
        if sub6 is not None:
            wanted6 = (cfg.get("IPAMConfig") or {}).get("IPv6Address")
            try:
                address6 = self.ipam.allocate(rec["Id"], sub6.network, sub6.gateway, cid, sub6.ip_range,
                                              parse_address(wanted6, "IPv6 address", 6) if wanted6 else None)
            except BaseException:
                self.ipam.release(rec["Id"], str(address))
                raise
        fault("network-after-lease")
        mac = cfg.get("MacAddress") or (container.get("Config") or {}).get("MacAddress") if first else \
            cfg.get("MacAddress")
        mac = (mac or bridge.random_mac()).lower()
        user = not rec["Coracle"]["Builtin"]
        config = container.get("Config") or {}
        aliases = list(cfg.get("Aliases") or []) if user else []
        dns_names = None
        if user:
            dns_names = list(dict.fromkeys(
                n for n in [container.get("Name", "").lstrip("/"), cid[:12], *aliases, config.get("Hostname")] if n))
        ns_path = f"/proc/{pid}/ns/net"
        body = {"IPAMConfig": cfg.get("IPAMConfig") or None, "Aliases": aliases or None, "MacAddress": mac,
                "Gateway": "" if rec["Internal"] else str(sub.gateway), "IPAddress": str(address),
                "IPPrefixLen": sub.network.prefixlen, "DNSNames": dns_names}
        if sub6 is not None:
            body.update(IPv6Gateway="" if rec["Internal"] else str(sub6.gateway), GlobalIPv6Address=str(address6),
                        GlobalIPv6PrefixLen=sub6.network.prefixlen)
        try:
            ep = self._record_endpoint(container, rec, body, address, undo)
        except BaseException:
            for leased in (address, address6):
                if leased is not None:
                    self.ipam.release(rec["Id"], str(leased))
            if self.overlay is not None and rec["Driver"] == "overlay":
                self.overlay.drop({"NetworkID": rec["Id"], "EndpointID": "", "IPAddress": str(address)})
            raise
        ep["Veth"] = "veth" + ep["EndpointID"][:11]
        self._wire(rec, ep, ns_path)
        return ep

    def _wire(self, rec: dict[str, Any], ep: dict[str, Any], ns_path: str) -> None:
        """The veth pair of an endpoint (host side on the bridge), its address and routes inside."""
        if rec["Driver"] == "overlay" and self.overlay is not None:
            self.overlay.wire(rec, ep, ns_path)
            self.store.execute("UPDATE net_endpoints SET body = ? WHERE id = ?", (json.dumps(ep), ep["EndpointID"]))
            return
        sub, sub6 = Subnet(rec), Subnet.v6(rec)
        with bridge.netns_socket(ns_path) as cipr:
            ifname = ep.get("Interface") or ""
            if not ifname or bridge.index(cipr, ifname) is not None:
                ifname = bridge.free_ifname(cipr)
            with self._host() as ipr:
                bridge.add_veth(ipr, ep["Veth"], rec["Coracle"]["Bridge"], ns_path, ifname, ep["MacAddress"],
                                rec["Coracle"]["MTU"], isolated=not rec["Coracle"]["ICC"])
            fault("network-after-veth")
            ep["Interface"] = ifname
            self.store.execute("UPDATE net_endpoints SET body = ? WHERE id = ?", (json.dumps(ep), ep["EndpointID"]))
            if sub6 is not None:
                with netns(ns_path):  # IPv6 may be off by default in the container's namespace
                    bridge.sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "0")
            bridge.configure_peer(cipr, ifname, ep["IPAddress"], sub.network.prefixlen, ep["Gateway"] or None,
                                  (ep["GlobalIPv6Address"], sub6.network.prefixlen) if sub6 is not None else None,
                                  ep["IPv6Gateway"] or None)

    def replumb(self, cid: str, pid: int, dry_run: bool = False) -> list[str]:
        """Re-make the veths of a running container's endpoints that were deleted behind our back.

        Same name, MAC, address and routes as before; published ports and the
        resolver are keyed by the address and the namespace, so they work again
        as they are. Returns what was (or, with dry_run, would be) re-made.
        """
        found = []
        with self._lock:
            with self._host() as ipr:
                missing = [ep for ep in self._endpoints(container=cid)
                           if ep.get("Veth") and bridge.index(ipr, ep["Veth"]) is None]
            for ep in missing:
                found.append(f"veth {ep['Veth']} on {ep['NetworkName']} ({ep['IPAddress']})")
                if not dry_run:
                    self._wire(self.resolve(ep["NetworkID"]), ep, f"/proc/{pid}/ns/net")
        return found

    def _publish(self, container: dict[str, Any], ep: dict[str, Any],
                 undo: list[Callable[[], None]]) -> list[Mapping]:
        """Choose host ports, reserve them in the store, then add the map elements (all or nothing)."""
        hc, config = container["HostConfig"], container.get("Config") or {}
        reqs = ports.requests(hc.get("PortBindings"), config.get("ExposedPorts"), bool(hc.get("PublishAllPorts")))
        if not reqs:
            return []
        cid = container["Id"]
        with self._lock:
            # (proto, port) -> host addresses already using it: the 1000th port costs what the first did
            taken: dict[tuple[str, int], list[str]] = {}
            for proto, host_ip, host_port in self.store.execute("SELECT proto, host_ip, host_port FROM net_ports"):
                taken.setdefault((proto, host_port), []).append(host_ip)
            chosen: list[Mapping] = []
            address6 = ep.get("GlobalIPv6Address")
            with netns(self.host_netns):  # once for all ports, not once per port
                for req in reqs:
                    if ports.version(req.host_ip) == 6 and not address6:
                        raise InvalidParameter(f"cannot publish {req.key} on {req.host_ip}: the container has no "
                                               f"IPv6 address on network {ep['NetworkName']}")
                    host_ips = [req.host_ip] + (["::"] if req.dual and address6 else [])
                    port = self._choose_port(req, host_ips, taken)
                    for ip in host_ips:
                        taken.setdefault((req.proto, port), []).append(ip)
                        target = address6 if ports.version(ip) == 6 else ep["IPAddress"]
                        chosen.append(Mapping(req.proto, ip, port, target, req.container_port))
            with self.store.tx() as db:
                for m in chosen:
                    db.execute("INSERT INTO net_ports VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (m.proto, m.host_ip, m.host_port, cid, ep["NetworkID"], m.container_ip,
                                m.container_port))
        undo.append(lambda: self.store.execute("DELETE FROM net_ports WHERE container = ?", (cid,)))
        self.firewall.add_mappings(chosen)
        fault("network-after-nft")
        undo.append(lambda: self.firewall.remove_mappings(chosen))
        return chosen

    @staticmethod
    def _choose_port(req: ports.PortRequest, host_ips: list[str], taken: dict[tuple[str, int], list[str]]) -> int:
        """A host port free on every one of `host_ips` (the request's address, and :: when dual): the
        given one, the first free of a range, or an ephemeral one.

        Runs with the calling thread in the host's network namespace (see _publish)."""
        if req.host_port and not req.host_end:
            candidates: list[int] = [req.host_port]
        elif req.host_port:
            candidates = list(range(req.host_port, req.host_end + 1))
        else:
            low, high = ports.ephemeral_range()
            start = random.randint(low, high)
            candidates = [*range(start, high + 1), *range(low, start)]
        shown = ports.shown(req.host_ip)
        for port in candidates:
            if any(ports.overlaps(ip, wanted) for wanted in host_ips for ip in taken.get((req.proto, port), ())):
                continue
            busy = [ip for ip in host_ips if not ports.host_port_free(req.proto, ip, port)]
            if not busy:
                return port
            if len(candidates) == 1:
                raise Conflict(f"Bind for {ports.shown(busy[0])}:{port} failed: address already in use by a "
                               "process of the host")
        if len(candidates) == 1:
            raise Conflict(f"Bind for {shown}:{candidates[0]} failed: port is already allocated")
        raise Conflict(f"no free host port for {shown}:{req.host_port or ''}"
                       f"{'-' + str(req.host_end) if req.host_end else ''}/{req.proto}: all are allocated")

    def _settings(self, container: dict[str, Any], endpoints: list[dict[str, Any]], mappings: list[Mapping],
                  sandbox: str) -> dict[str, Any]:
        """Docker's NetworkSettings for the endpoints and mappings of a container."""
        exposed = (container.get("Config") or {}).get("ExposedPorts") or {}
        port_map: dict[str, Any] = {key: None for key in exposed}
        for m in mappings:
            port_map[m.key] = (port_map.get(m.key) or []) + [{"HostIp": m.host_ip, "HostPort": str(m.host_port)}]
        out: dict[str, Any] = {
            "Bridge": "", "SandboxID": hashlib.sha256(f"{container['Id']}{sandbox}".encode()).hexdigest()
            if sandbox else "", "SandboxKey": sandbox, "HairpinMode": False, "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0, "Ports": port_map, "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
            "Networks": {ep["NetworkName"]: self._endpoint_view(ep) for ep in endpoints},
        }
        default = out["Networks"].get("bridge")
        if default:
            for key in ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress", "IPv6Gateway",
                        "GlobalIPv6Address", "GlobalIPv6PrefixLen"):
                out[key] = default[key]
        return out

    @staticmethod
    def _endpoint_view(ep: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in ep.items() if k not in PRIVATE}

    def detach(self, container_id: str) -> None:
        """Undo everything of a container: ports, veths, leases, endpoints, DNS. Never raises for gone things."""
        self.dns.stop(container_id)
        with self._lock:
            rows = self.store.execute("SELECT proto, host_ip, host_port, container_ip, container_port "
                                      "FROM net_ports WHERE container = ?", (container_id,))
            if rows:
                self.firewall.remove_mappings([Mapping(*r) for r in rows])
                self.store.execute("DELETE FROM net_ports WHERE container = ?", (container_id,))
            for ep in self._endpoints(container=container_id):
                self._drop_endpoint(ep)
            self.store.execute("DELETE FROM net_leases WHERE container = ?", (container_id,))

    # ----- connect / disconnect ------------------------------------------------

    def connect(self, container: dict[str, Any], pid: int | None, network_ref: str,
                endpoint_config: dict[str, Any] | None) -> dict[str, Any]:
        """`docker network connect`: live (next ethN) when running, recorded for the next start otherwise."""
        rec = self.resolve(network_ref)
        cfg = endpoint_config or {}
        cid = container["Id"]
        settings = copy.deepcopy(container.get("NetworkSettings") or {})
        networks = settings.setdefault("Networks", {})
        name = container.get("Name", "").lstrip("/")
        if any(self._safe_resolve(ref) == rec["Id"] for ref in networks) or self._endpoints(cid, rec["Id"]):
            raise Conflict(f"endpoint with name {name} already exists in network {rec['Name']}")
        self._check_endpoint(rec, cfg)
        if not pid:
            networks[rec["Name"]] = {"IPAMConfig": cfg.get("IPAMConfig") or None, "Links": None,
                                     "Aliases": cfg.get("Aliases") or None, "MacAddress": cfg.get("MacAddress") or "",
                                     "DriverOpts": None, "NetworkID": rec["Id"], "EndpointID": "", "Gateway": "",
                                     "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
                                     "GlobalIPv6PrefixLen": 0, "DNSNames": None}
            return settings
        undo: list[Callable[[], None]] = []
        try:
            ep = self._join(container, pid, rec, cfg, undo, first=False)
            if not rec["Coracle"]["Builtin"] and cid not in self.dns.serving():
                self._serve_dns(cid, pid, container)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("undo of a failed connect of %s", cid)
            raise
        networks[rec["Name"]] = self._endpoint_view(ep)
        return settings

    def _safe_resolve(self, ref: str) -> str | None:
        try:
            return self.resolve(ref)["Id"]
        except (NotFound, InvalidParameter):
            return None

    def disconnect(self, container: dict[str, Any] | str, network_ref: str, force: bool = False
                   ) -> dict[str, Any] | None:
        """`docker network disconnect`; returns the new NetworkSettings when given the container record."""
        rec = self.resolve(network_ref)
        record = container if isinstance(container, dict) else None
        cid = record["Id"] if record else str(container)
        settings = copy.deepcopy((record or {}).get("NetworkSettings") or {})
        networks = settings.get("Networks") or {}
        listed = [ref for ref in networks if self._safe_resolve(ref) == rec["Id"]]
        endpoints = self._endpoints(cid, rec["Id"])
        if not listed and not endpoints and not force:
            raise Conflict(f"container {cid} is not connected to network {rec['Name']}")
        with self._lock:
            rows = self.store.execute("SELECT proto, host_ip, host_port, container_ip, container_port "
                                      "FROM net_ports WHERE container = ? AND network = ?", (cid, rec["Id"]))
            if rows:
                self.firewall.remove_mappings([Mapping(*r) for r in rows])
                self.store.execute("DELETE FROM net_ports WHERE container = ? AND network = ?", (cid, rec["Id"]))
            for ep in endpoints:
                self._drop_endpoint(ep)
        if not self._user_endpoints(cid):
            self.dns.stop(cid)
        if record is None:
            return None
        for ref in listed:
            del networks[ref]
        wanted = (record.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        for ref in [r for r in wanted if self._safe_resolve(r) == rec["Id"]]:
            del wanted[ref]
        if rec["Name"] == "bridge":
            for key in ("EndpointID", "Gateway", "IPAddress", "MacAddress"):
                settings[key] = ""
            settings["IPPrefixLen"] = 0
        return settings

    # ----- files -----------------------------------------------------------------

    def files(self, container: dict[str, Any], settings: dict[str, Any] | None) -> dict[str, str]:
        """Contents of /etc/hostname, /etc/hosts and /etc/resolv.conf for the container."""
        hc, config = container.get("HostConfig") or {}, container.get("Config") or {}
        mode = hc.get("NetworkMode") or "bridge"
        mode = "bridge" if mode == "default" else mode
        hostname = config.get("Hostname") or container["Id"][:12]
        fqdn = f"{hostname}.{config['Domainname']}" if config.get("Domainname") else hostname
        extra = files.extra_hosts(hc.get("ExtraHosts"), self._host_gateway())
        try:
            with open(self.resolv_conf) as f:
                host_resolv = f.read()
        except OSError:
            host_resolv = ""
        dns_flags = {"dns": hc.get("Dns"), "search": hc.get("DnsSearch"), "options": hc.get("DnsOptions")}
        if mode == "host":
            return {"/etc/hostname": hostname + "\n",
                    "/etc/hosts": files.hosts([], extra, self.hosts_file),
                    "/etc/resolv.conf": files.resolv_conf(host_resolv, embedded=False, keep_loopback=True,
                                                          **dns_flags)}
        networks = (settings or {}).get("Networks") or {}
        names = fqdn if fqdn == hostname else f"{fqdn} {hostname}"
        first = next((n for n in networks.values() if n.get("IPAddress")), None)
        own = [(first[key], names) for key in ("IPAddress", "GlobalIPv6Address") if first and first.get(key)]
        refs = [mode] + list(networks)
        embedded = any(self._is_user_network(ref) for ref in refs)
        return {"/etc/hostname": hostname + "\n",
                "/etc/hosts": files.hosts(own, extra),
                "/etc/resolv.conf": files.resolv_conf(host_resolv, embedded=embedded, keep_loopback=False,
                                                      **dns_flags)}

    def _is_user_network(self, ref: str) -> bool:
        try:
            return not self.resolve(ref)["Coracle"]["Builtin"]
        except (NotFound, InvalidParameter):
            return False

    def _host_gateway(self) -> str:
        for rec in self.store.all(KIND):
            if rec["Name"] == "bridge" and rec["Coracle"]["Builtin"]:
                return str(Subnet(rec).gateway)
        return "127.0.0.1"

    # ----- names ---------------------------------------------------------------

    def rename(self, container: dict[str, Any], old_name: str) -> None:
        """The container (already holding its new Name) answers to it, not to `old_name`, on its networks;
        its NetworkSettings show the new DNSNames (the dict passed in is mutated; the engine saves it)."""
        cid, new_name = container["Id"], container["Name"].lstrip("/")
        old_name = old_name.lstrip("/")
        with self._lock:
            for ep in self._endpoints(container=cid):
                names = ep.get("DNSNames") or []
                if old_name in names:
                    names[names.index(old_name)] = new_name
                ep["ContainerName"] = new_name
                self.store.execute("UPDATE net_endpoints SET body = ? WHERE id = ?", (json.dumps(ep), ep["EndpointID"]))
                self.names.add(ep)
                shown = ((container.get("NetworkSettings") or {}).get("Networks") or {}).get(ep["NetworkName"])
                if shown is not None and ep.get("DNSNames"):
                    shown["DNSNames"] = list(ep["DNSNames"])
