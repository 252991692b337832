"""The nftables firewall: tables `ip coracle` and `ip6 coracle`, rules fixed, facts in sets and maps.

The rule set never changes after start-up; networks and published ports are
*elements* of sets and maps, so publishing the 1000th port adds one map element
(one atomic JSON batch), not one more rule to walk. We touch nothing outside our
table: no flush, no policy change, no other table's chains.

    set bridges      ifname                 every coracle bridge
    set intra        ifname . ifname        (br, br) for networks with ICC on
    set internal     ifname                 bridges of `internal` networks
    set masq_nets    ipv4_addr (interval)   subnets whose outbound traffic is masqueraded
    set bridge_nets  ifname . ipv4_addr     (bridge, subnet): hairpin/same-bridge DNAT masquerade
    map any_addr, any_port    inet_proto . inet_service : ipv4_addr, : inet_service    -p 8080:80
    map host_addr, host_port  ipv4_addr . inet_proto . inet_service : (same)        -p 127.0.0.1:8080:80

    loopback_guard (filter, raw)  before conntrack and routing: packets for 127.0.0.0/8 arriving
                              on any interface but lo are dropped. Localhost access needs
                              route_localnet=1 on the bridges (see postrouting), which alone
                              would let a container (CAP_NET_RAW, a frame to the gateway's
                              MAC) or a LAN peer reach the host's loopback-only services and
                              ports published on 127.0.0.1 (CVE-2020-8558; Docker 28 drops
                              them the same way). Replies of localhost connections still
                              carry the gateway's address here: they are un-masqueraded later.
    prerouting (nat, dstnat)  packets to a local address: DNAT through the maps
    output (nat, -100)        the same for the host's own connections (localhost access)
    postrouting (nat, srcnat) masquerade 127/8 sources leaving into a bridge (localhost access,
                              with route_localnet=1 on the bridge), DNAT'd traffic whose source
                              is on the destination bridge (hairpin), and bridge subnets leaving
                              through any non-bridge interface
    forward (filter)          same-bridge traffic with ICC on: accept; DNAT'd traffic: accept;
                              into or out of internal networks: drop; new connections into a
                              bridge from anywhere else (other networks, the LAN to unpublished
                              ports): drop

`ip6 coracle` (made when the kernel has IPv6) is the same table for IPv6:
ipv6_addr where the above says ipv4_addr, ::1 where it says 127.0.0.0/8 (a
port published on ::1 is not reachable through DNAT: Linux has no
route_localnet for IPv6), holding the bridges and subnets of networks created
with EnableIPv6 and the mappings whose container address is IPv6. A change
that touches both families is still one batch, so one atomic transaction.

ICC off is enforced twice: the bridge ports are isolated (the bridge itself drops
port-to-port frames, no br_netfilter needed) and, where br_netfilter hands
bridged frames to the forward hook, `intra` lacks the pair so they are dropped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
import threading
from typing import Any

import nftables

from coracle.errors import SystemError_
from coracle.network.firewall import BridgeRules, FirewallDriver, nfnetlink
from coracle.network.ports import Mapping
from coracle.netns import netns

TABLE = "coracle"


class Family:
    """The words that differ between the `ip` and the `ip6` table."""

    def __init__(self, name: str, proto: str, addr: str, loopback: str, wildcard: str, af: int) -> None:
        self.name, self.proto, self.addr, self.wildcard, self.af = name, proto, addr, wildcard, af
        self.loopback = _prefix(loopback)


def _prefix(cidr: str) -> dict[str, Any]:
    addr, _, length = cidr.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


IP = Family("ip", "ip", "ipv4_addr", "127.0.0.0/8", "0.0.0.0", socket.AF_INET)
IP6 = Family("ip6", "ip6", "ipv6_addr", "::1/128", "::", socket.AF_INET6)


def _family_of(address: str) -> Family:
    return IP6 if ":" in address else IP


def _ref(fam: Family, kind: str, name: str) -> dict[str, Any]:
    return {kind: {"family": fam.name, "table": TABLE, "name": name}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


# Published ports: keyed by (proto, port) for the wildcard address, (address, proto, port)
# otherwise. The target is split into an address map and a port map because
# libnftables 1.0.6 (Debian 12) crashes parsing JSON NAT statements whose map
# yields a concatenation; a published port is one element in each of the two.
SCOPES = ("any", "host")
TARGETS = ("addr", "port")


class SetType:
    """The fields of a set's (or map's) key, in order, and a map's value: `ifname`, `addr` (of the
    table's family), `subnet` (an address range: the set is an interval set), `proto`, `port`."""

    def __init__(self, *key: str, value: str | None = None) -> None:
        self.key, self.value = key, value
        self.interval = "subnet" in key


SETS = {
    "bridges": SetType("ifname"),
    "intra": SetType("ifname", "ifname"),
    "internal": SetType("ifname"),
    "masq_nets": SetType("subnet"),
    "bridge_nets": SetType("ifname", "subnet"),
    **{f"{scope}_{what}": SetType(*(("proto", "port") if scope == "any" else ("addr", "proto", "port")), value=what)
       for scope in SCOPES for what in TARGETS},
}

CT_DNAT = _match({"ct": {"key": "status"}}, "dnat", "in")


def _skeleton(fam: Family) -> list[dict[str, Any]]:
    """The table, its sets, maps, chains and the fixed rules, as JSON commands."""
    t = {"family": fam.name, "table": TABLE}
    words = {"ifname": "ifname", "addr": fam.addr, "subnet": fam.addr, "proto": "inet_proto", "port": "inet_service"}
    sets = []
    for name, kind in SETS.items():
        key = [words[field] for field in kind.key]
        spec: dict[str, Any] = {**t, "name": name, "type": key[0] if len(key) == 1 else key}
        if kind.interval:
            spec["flags"] = ["interval"]
        if kind.value:
            spec["map"] = words[kind.value]
        sets.append({"map" if kind.value else "set": spec})
    chains = [
        {"chain": {**t, "name": "published"}},
        {"chain": {**t, "name": "loopback_guard", "type": "filter", "hook": "prerouting", "prio": -300,
                   "policy": "accept"}},
        {"chain": {**t, "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
        {"chain": {**t, "name": "output", "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
        {"chain": {**t, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"chain": {**t, "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
    ]
    l4 = [_meta("l4proto"), _payload("th", "dport")]
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    rules = {
        "published": [
            [{"dnat": {"family": fam.name, **{field: {"map": {"key": {"concat": key}, "data": f"@{scope}_{what}"}}
                                              for field, what in (("addr", "addr"), ("port", "port"))}}}]
            for scope, key in (("host", [_payload(fam.proto, "daddr"), *l4]), ("any", l4))
        ],
        "loopback_guard": [
            [_match(_meta("iifname"), "lo", "!="), _match(_payload(fam.proto, "daddr"), fam.loopback),
             {"drop": None}],
        ],
        "prerouting": [
            [local, {"jump": {"target": "published"}}],
        ],
        "output": [
            [local, {"jump": {"target": "published"}}],
        ],
        "postrouting": [
            [_match(_meta("oifname"), "@bridges"), _match(_payload(fam.proto, "saddr"), fam.loopback),
             {"masquerade": None}],
            [CT_DNAT, _match({"concat": [_meta("oifname"), _payload(fam.proto, "saddr")]}, "@bridge_nets"),
             {"masquerade": None}],
            [_match(_payload(fam.proto, "saddr"), "@masq_nets"), _match(_meta("oifname"), "@bridges", "!="),
             {"masquerade": None}],
        ],
        "forward": [
            [_match({"concat": [_meta("iifname"), _meta("oifname")]}, "@intra"), {"accept": None}],
            [CT_DNAT, {"accept": None}],
            [_match(_meta("iifname"), "@internal"), {"drop": None}],
            [_match(_meta("oifname"), "@internal"), {"drop": None}],
            [_match(_meta("oifname"), "@bridges"), _match({"ct": {"key": "state"}}, ["new"], "in"),
             {"drop": None}],
        ],
    }
    out = [{"add": o} for o in sets + chains]
    for chain, exprs in rules.items():
        out += [{"add": {"rule": {**t, "chain": chain, "expr": expr}}} for expr in exprs]
    return out


Entry = tuple[tuple[str | int, ...], str | int | None]  # a key's fields in order, a map's value
Elements = list[tuple[Family, str, list[Entry]]]         # (table, set or map, entries)


def _network_elements(net: BridgeRules) -> Elements:
    """What describes one network: its IPv4 side, and its IPv6 side if any."""
    out: Elements = []
    for fam, subnet in ((IP, net.subnet), (IP6, net.subnet6)):
        if not subnet:
            continue
        out += [(fam, "bridges", [((net.bridge,), None)]), (fam, "bridge_nets", [((net.bridge, subnet), None)])]
        if net.icc:
            out.append((fam, "intra", [((net.bridge, net.bridge), None)]))
        if net.internal:
            out.append((fam, "internal", [((net.bridge,), None)]))
        elif net.masquerade:
            out.append((fam, "masq_nets", [((subnet,), None)]))
    return out


def _mapping_elements(mappings: list[Mapping]) -> Elements:
    elems: dict[tuple[str, str], list[Entry]] = {}
    for m in mappings:
        fam = _family_of(m.container_ip)
        scope, key = ("any", (m.proto, m.host_port)) if m.host_ip == fam.wildcard else \
            ("host", (m.host_ip, m.proto, m.host_port))
        elems.setdefault((fam.name, f"{scope}_addr"), []).append((key, m.container_ip))
        elems.setdefault((fam.name, f"{scope}_port"), []).append((key, m.container_port))
    return [(IP6 if fam == "ip6" else IP, name, e) for (fam, name), e in elems.items()]


def _json(fam: Family, name: str, entries: list[Entry]) -> dict[str, Any]:
    """An `add element` command for libnftables (what `restore` hands it with the table)."""
    kind = SETS[name]

    def key(values: tuple[str | int, ...]) -> Any:
        parts = [_prefix(str(v)) if field == "subnet" else v for field, v in zip(kind.key, values, strict=True)]
        return parts[0] if len(parts) == 1 else {"concat": parts}

    elems = [key(k) if kind.value is None else [key(k), v] for k, v in entries]
    return {"add": {"element": {"family": fam.name, "table": TABLE, "name": name, "elem": elems}}}


PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}


def _field(fam: Family, field: str, value: str | int, last: bool = False) -> bytes:
    """One field in the kernel's layout (a subnet as its first address, or its `last`)."""
    if field == "ifname":
        return str(value).encode().ljust(16, b"\0")
    if field == "addr":
        return socket.inet_pton(fam.af, str(value))
    if field == "subnet":
        net = ipaddress.ip_network(str(value))
        return (net.broadcast_address if last else net.network_address).packed
    if field == "proto":
        return bytes([PROTOCOLS[str(value)]])
    return struct.pack("!H", int(value))


def _wire(fam: Family, name: str, entries: list[Entry]) -> tuple[nfnetlink.Element, ...]:
    """Entries as the kernel holds them, the way nft encodes them (see nfnetlink.py)."""
    kind = SETS[name]
    out = []
    for values, value in entries:
        data = _field(fam, kind.value, value) if kind.value and value is not None else None
        if len(kind.key) == 1 and kind.interval:  # a range: a start element and an end element after it
            net = ipaddress.ip_network(str(values[0]))
            out.append(nfnetlink.Element(net.network_address.packed))
            if int(net.broadcast_address) != (1 << net.max_prefixlen) - 1:  # a range up to the top has no end
                out.append(nfnetlink.Element((net.broadcast_address + 1).packed, flags=nfnetlink.INTERVAL_END))
            continue

        out.append(nfnetlink.Element(_key(fam, kind, values, False),
                                     _key(fam, kind, values, True) if kind.interval else None, data))
    return tuple(out)


def _key(fam: Family, kind: SetType, values: tuple[str | int, ...], last: bool) -> bytes:
    """A key in the kernel's layout: in a concatenation, each field padded to 4 bytes."""
    fields = [_field(fam, f, v, last) for f, v in zip(kind.key, values, strict=True)]
    return fields[0] if len(fields) == 1 else b"".join(f.ljust(-(-len(f) // 4) * 4, b"\0") for f in fields)


class NftablesFirewall(FirewallDriver):
    """Drives the `ip coracle` and `ip6 coracle` tables through libnftables' JSON interface."""

    name = "nftables"
    localhost_dnat = True

    def __init__(self, netns_path: str) -> None:
        self._ns = netns_path
        self._lock = threading.Lock()  # neither a libnftables context nor a netlink conversation is thread-safe
        with netns(netns_path):
            self._nft = nftables.Nftables()
            self._elements = nfnetlink.ElementWriter()
            # a kernel booted without IPv6 gets no ip6 table (and no IPv6 network can be made)
            self.families = [IP, IP6] if os.path.isdir("/proc/sys/net/ipv6") else [IP]
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def _run(self, commands: list[dict[str, Any]]) -> Any:
        with self._lock, netns(self._ns):
            rc, out, err = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            raise SystemError_(f"nftables refused the change: {str(err).strip()}")
        return out

    def _write(self, add: bool, elements: Elements) -> None:
        """Add or delete elements in one transaction (all or none)."""
        changes = [nfnetlink.Change(add, fam.name, TABLE, name, _wire(fam, name, entries))
                   for fam, name, entries in elements if entries]
        try:
            with self._lock:
                self._elements.apply(changes)
        except OSError as exc:
            names = ", ".join(sorted({f"{fam.name} {name}" for fam, name, _ in elements}))
            raise SystemError_(f"nftables refused the change to {names}: {exc.strerror}") from None

    def restore(self, networks: list[BridgeRules], mappings: list[Mapping]) -> None:
        commands: list[dict[str, Any]] = []
        for fam in self.families:
            table = {"table": {"family": fam.name, "name": TABLE}}
            commands += [{"add": table}, {"delete": table}, {"add": table}, *_skeleton(fam)]
        elements = [e for net in networks for e in _network_elements(net)] + _mapping_elements(mappings)
        commands += [_json(fam, name, entries) for fam, name, entries in elements]
        self._run(commands)

    def add_network(self, net: BridgeRules) -> None:
        self._write(True, _network_elements(net))

    def remove_network(self, net: BridgeRules) -> None:
        self._delete(_network_elements(net))

    def add_mappings(self, mappings: list[Mapping]) -> None:
        self._write(True, _mapping_elements(mappings))

    def remove_mappings(self, mappings: list[Mapping]) -> None:
        self._delete(_mapping_elements(mappings))

    def _delete(self, elements: Elements) -> None:
        """Delete elements in one batch; if some are already gone, delete the rest one by one."""
        try:
            self._write(False, elements)
        except SystemError_:
            for fam, name, entries in elements:
                for entry in entries:
                    with contextlib.suppress(SystemError_):  # already gone: deleting is idempotent
                        self._write(False, [(fam, name, [entry])])

    def mappings(self) -> list[Mapping]:
        out: list[Mapping] = []
        for fam in self.families:
            for scope in SCOPES:
                found: dict[str, dict[tuple[Any, ...], Any]] = {}
                for what in TARGETS:
                    try:
                        listing = self._run([{"list": _ref(fam, "map", f"{scope}_{what}")}])
                    except SystemError_:
                        listing = None  # no table (never started, or torn down): nothing published
                    found[what] = {tuple(key["concat"]): value for obj in (listing or {}).get("nftables", [])
                                   for key, value in (obj.get("map") or {}).get("elem", [])}
                for key, addr in found["addr"].items():
                    ip, proto, port = (fam.wildcard, *key) if scope == "any" else key
                    out.append(Mapping(str(proto), ip, int(port), addr, int(found["port"].get(key, 0))))
        return out

    def teardown(self) -> None:
        commands: list[dict[str, Any]] = []
        for fam in self.families:
            table = {"table": {"family": fam.name, "name": TABLE}}
            commands += [{"add": table}, {"delete": table}]
        self._run(commands)
