"""The nftables firewall: one table `ip coracle`, rules fixed, facts in sets and maps.

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

    prerouting (nat, dstnat)  packets to a local address: DNAT through the maps, except
                              127.0.0.0/8 arriving from anywhere but lo (so a port published
                              on 127.0.0.1 is unreachable from the LAN, unlike Docker < 28)
    output (nat, -100)        the same for the host's own connections (localhost access)
    postrouting (nat, srcnat) masquerade 127/8 sources leaving into a bridge (localhost access,
                              with route_localnet=1 on the bridge), DNAT'd traffic whose source
                              is on the destination bridge (hairpin), and bridge subnets leaving
                              through any non-bridge interface
    forward (filter)          same-bridge traffic with ICC on: accept; DNAT'd traffic: accept;
                              into or out of internal networks: drop; new connections into a
                              bridge from anywhere else (other networks, the LAN to unpublished
                              ports): drop

ICC off is enforced twice: the bridge ports are isolated (the bridge itself drops
port-to-port frames, no br_netfilter needed) and, where br_netfilter hands
bridged frames to the forward hook, `intra` lacks the pair so they are dropped.
"""

from __future__ import annotations

import threading
from typing import Any

import nftables

from coracle.errors import SystemError_
from coracle.network.firewall import BridgeRules, FirewallDriver
from coracle.network.ports import Mapping
from coracle.runtime.syscalls import netns

FAMILY = "ip"
TABLE = "coracle"


def _ref(kind: str, name: str) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, "name": name}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _prefix(cidr: str) -> dict[str, Any]:
    addr, _, length = cidr.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


# Published ports: keyed by (proto, port) for the wildcard address, (address, proto, port)
# otherwise. The target is split into an address map and a port map because
# libnftables 1.0.6 (Debian 12) crashes parsing JSON NAT statements whose map
# yields a concatenation; a published port is one element in each of the two.
SCOPES = {"any": ["inet_proto", "inet_service"], "host": ["ipv4_addr", "inet_proto", "inet_service"]}
TARGETS = {"addr": "ipv4_addr", "port": "inet_service"}

LOOPBACK = _prefix("127.0.0.0/8")
CT_DNAT = _match({"ct": {"key": "status"}}, "dnat", "in")


def _skeleton() -> list[dict[str, Any]]:
    """The table, its sets, maps, chains and the fixed rules, as JSON commands."""
    t = {"family": FAMILY, "table": TABLE}
    sets = [
        {"set": {**t, "name": "bridges", "type": "ifname"}},
        {"set": {**t, "name": "intra", "type": ["ifname", "ifname"]}},
        {"set": {**t, "name": "internal", "type": "ifname"}},
        {"set": {**t, "name": "masq_nets", "type": "ipv4_addr", "flags": ["interval"]}},
        {"set": {**t, "name": "bridge_nets", "type": ["ifname", "ipv4_addr"], "flags": ["interval"]}},
        *({"map": {**t, "name": f"{scope}_{what}", "type": key, "map": data}}
          for scope, key in SCOPES.items() for what, data in TARGETS.items()),
    ]
    chains = [
        {"chain": {**t, "name": "published"}},
        {"chain": {**t, "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
        {"chain": {**t, "name": "output", "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
        {"chain": {**t, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"chain": {**t, "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
    ]
    l4 = [_meta("l4proto"), _payload("th", "dport")]
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    rules = {
        "published": [
            [{"dnat": {"family": FAMILY, **{field: {"map": {"key": {"concat": key}, "data": f"@{scope}_{what}"}}
                                            for field, what in (("addr", "addr"), ("port", "port"))}}}]
            for scope, key in (("host", [_payload("ip", "daddr"), *l4]), ("any", l4))
        ],
        "prerouting": [
            [_match(_meta("iifname"), "lo", "!="), _match(_payload("ip", "daddr"), LOOPBACK), {"return": None}],
            [local, {"jump": {"target": "published"}}],
        ],
        "output": [
            [local, {"jump": {"target": "published"}}],
        ],
        "postrouting": [
            [_match(_meta("oifname"), "@bridges"), _match(_payload("ip", "saddr"), LOOPBACK), {"masquerade": None}],
            [CT_DNAT, _match({"concat": [_meta("oifname"), _payload("ip", "saddr")]}, "@bridge_nets"),
             {"masquerade": None}],
            [_match(_payload("ip", "saddr"), "@masq_nets"), _match(_meta("oifname"), "@bridges", "!="),
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


def _network_elements(net: BridgeRules) -> list[tuple[str, list[Any]]]:
    """(set name, elements) that describe one network."""
    out: list[tuple[str, list[Any]]] = [
        ("bridges", [net.bridge]),
        ("bridge_nets", [{"concat": [net.bridge, _prefix(net.subnet)]}]),
    ]
    if net.icc:
        out.append(("intra", [{"concat": [net.bridge, net.bridge]}]))
    if net.internal:
        out.append(("internal", [net.bridge]))
    elif net.masquerade:
        out.append(("masq_nets", [_prefix(net.subnet)]))
    return out


def _mapping_elements(mappings: list[Mapping]) -> list[tuple[str, list[Any]]]:
    elems: dict[str, list[Any]] = {}
    for m in mappings:
        scope, key = ("any", [m.proto, m.host_port]) if m.host_ip == "0.0.0.0" else \
            ("host", [m.host_ip, m.proto, m.host_port])
        elems.setdefault(f"{scope}_addr", []).append([{"concat": key}, m.container_ip])
        elems.setdefault(f"{scope}_port", []).append([{"concat": key}, m.container_port])
    return list(elems.items())


def _element(verb: str, kind: str, name: str, elems: list[Any]) -> dict[str, Any]:
    return {verb: {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": elems}}}


class NftablesFirewall(FirewallDriver):
    """Drives the `ip coracle` table through libnftables' JSON interface."""

    name = "nftables"

    def __init__(self, netns_path: str) -> None:
        self._ns = netns_path
        self._lock = threading.Lock()  # a libnftables context is not thread-safe
        with netns(netns_path):
            self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def _run(self, commands: list[dict[str, Any]]) -> Any:
        with self._lock, netns(self._ns):
            rc, out, err = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            raise SystemError_(f"nftables refused the change: {str(err).strip()}")
        return out

    def restore(self, networks: list[BridgeRules], mappings: list[Mapping]) -> None:
        table = {"table": {"family": FAMILY, "name": TABLE}}
        commands = [{"add": table}, {"delete": table}, {"add": table}, *_skeleton()]
        for net in networks:
            commands += [_element("add", "set", name, e) for name, e in _network_elements(net)]
        commands += [_element("add", "map", name, e) for name, e in _mapping_elements(mappings)]
        self._run(commands)

    def add_network(self, net: BridgeRules) -> None:
        self._run([_element("add", "set", name, e) for name, e in _network_elements(net)])

    def remove_network(self, net: BridgeRules) -> None:
        self._delete([("set", name, e) for name, e in _network_elements(net)])

    def add_mappings(self, mappings: list[Mapping]) -> None:
        if mappings:
            self._run([_element("add", "map", name, e) for name, e in _mapping_elements(mappings)])

    def remove_mappings(self, mappings: list[Mapping]) -> None:
        self._delete([("map", name, e) for name, e in _mapping_elements(mappings)])

    def _delete(self, groups: list[tuple[str, str, list[Any]]]) -> None:
        """Delete elements in one batch; if some are already gone, delete the rest one by one."""
        if not groups:
            return
        try:
            self._run([_element("delete", kind, name, e) for kind, name, e in groups])
        except SystemError_:
            for kind, name, elems in groups:
                for elem in elems:
                    try:
                        self._run([_element("delete", kind, name, [elem])])
                    except SystemError_:
                        pass  # already gone: deleting is idempotent

    def mappings(self) -> list[Mapping]:
        out: list[Mapping] = []
        for scope in SCOPES:
            found: dict[str, dict[tuple, Any]] = {}
            for what in TARGETS:
                try:
                    listing = self._run([{"list": _ref("map", f"{scope}_{what}")}])
                except SystemError_:
                    return []  # no table (never started, or torn down): nothing published
                found[what] = {tuple(key["concat"]): value for obj in (listing or {}).get("nftables", [])
                               for key, value in (obj.get("map") or {}).get("elem", [])}
            for key, addr in found["addr"].items():
                ip, proto, port = ("0.0.0.0", *key) if scope == "any" else key
                out.append(Mapping(str(proto), ip, int(port), addr, int(found["port"].get(key, 0))))
        return out

    def teardown(self) -> None:
        table = {"table": {"family": FAMILY, "name": TABLE}}
        self._run([{"add": table}, {"delete": table}])
