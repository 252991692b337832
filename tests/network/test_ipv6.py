"""IPv6 on user bridge networks (`network create --ipv6`), proven with real IPv6 traffic."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from networld import (
    UPLINK6_HOST,
    UPLINK6_OUTSIDE,
    UPLINK_HOST,
    World,
    answers,
    ask,
    dns_query,
    serving,
    sh,
)

from coracle.errors import Conflict, InvalidParameter

SUBNET6 = "2001:db8:6::/64"


def six(world: World, name: str = "six", subnet: str = SUBNET6, **kwargs: Any) -> dict[str, Any]:
    world.net.create(name, enable_ipv6=True, ipam={"Config": [{"Subnet": subnet}]}, **kwargs)
    return world.net.inspect(name)


def inside(ns: str, *args: str) -> Any:
    return json.loads(sh("nsenter", f"--net={ns}", "ip", "-j", *args).stdout or "[]")


def test_network_and_container_get_ipv6_addresses_routes_and_names(world):
    net = six(world)
    assert net["EnableIPv6"] is True
    assert net["IPAM"]["Config"] == [{"Subnet": "10.200.0.0/24", "Gateway": "10.200.0.1"},
                                     {"Subnet": SUBNET6, "Gateway": "2001:db8:6::1"}]
    dev = net["Options"].get("com.docker.network.bridge.name") or f"br-{net['Id'][:12]}"
    addrs = world.ip_json("addr", "show", "dev", dev)[0]["addr_info"]
    assert ("2001:db8:6::1", 64) in [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet6"]

    c = world.container("six", hostname="web")
    ep = c.settings["Networks"]["six"]
    assert (ep["GlobalIPv6Address"], ep["GlobalIPv6PrefixLen"], ep["IPv6Gateway"]) == ("2001:db8:6::2", 64,
                                                                                       "2001:db8:6::1")
    assert ep["IPAddress"] == "10.200.0.2"  # IPv4 as before
    routes = inside(c.ns, "-6", "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [("2001:db8:6::1", "eth0")]
    assert world.net.inspect("six")["Containers"][c.id]["IPv6Address"] == "2001:db8:6::2/64"
    hosts = world.files(c.rec, c.settings)["/etc/hosts"]
    assert "10.200.0.2\tweb\n" in hosts and "2001:db8:6::2\tweb\n" in hosts

    # --ip6: a static address, refused when taken, outside the subnet or on an IPv4-only network
    static = world.container("six", endpoints={"six": {"IPAMConfig": {"IPv6Address": "2001:db8:6::99"}}})
    assert static.ip6("six") == "2001:db8:6::99"
    with pytest.raises(Conflict, match="Address already in use"):
        world.container("six", endpoints={"six": {"IPAMConfig": {"IPv6Address": "2001:db8:6::99"}}})
    with pytest.raises(InvalidParameter, match="not in subnet"):
        world.container("six", endpoints={"six": {"IPAMConfig": {"IPv6Address": "2001:db8:7::5"}}})
    world.net.create("four")
    with pytest.raises(InvalidParameter, match="has no IPv6"):
        world.container("four", endpoints={"four": {"IPAMConfig": {"IPv6Address": "2001:db8:6::5"}}})
    assert sorted(a for _, a, _ in world.net.ipam.leases()) == sorted(
        ["10.200.0.2", "2001:db8:6::2", "10.200.0.3", "2001:db8:6::99"])


def test_ipv6_subnets_come_from_the_ula_pool_and_never_overlap(world):
    world.net.create("a", enable_ipv6=True)
    world.net.create("b", enable_ipv6=True)
    assert world.net.inspect("a")["IPAM"]["Config"][1] == {"Subnet": "fdc0:ac1e::/64", "Gateway": "fdc0:ac1e::1"}
    assert world.net.inspect("b")["IPAM"]["Config"][1]["Subnet"] == "fdc0:ac1e:0:1::/64"
    before = len(world.net.list({}))
    with pytest.raises(Conflict, match="overlaps network a"):
        six(world, "c", "fdc0:ac1e::/48")
    assert len(world.net.list({})) == before


def test_containers_reach_each_other_over_ipv6_by_name(world):
    six(world)
    web, db = world.container("six"), world.container("six", endpoints={"six": {"Aliases": ["database"]}})
    assert answers(dns_query(web.ns, "database", "AAAA")) == [db.ip6("six")]
    assert answers(dns_query(web.ns, "database", "A")) == [db.ip("six")]
    assert answers(dns_query(web.ns, db.name, "AAAA", tcp=True)) == [db.ip6("six")]
    ptr = ipaddress.ip_address(web.ip6("six")).reverse_pointer
    assert answers(dns_query(db.ns, ptr, "PTR")) == [f"{web.name}.six."]
    with serving((web.ns, "tcp", 80, "::")):
        assert ask(db.ns, "tcp", answers(dns_query(db.ns, web.name, "AAAA"))[0], 80) == db.ip6("six")


def test_outbound_ipv6_is_masqueraded_to_the_uplink_address(world):
    six(world)
    c = world.container("six")
    for proto in ("tcp", "udp"):
        with serving((world.outside, proto, 7000, "::")):
            assert ask(c.ns, proto, UPLINK6_OUTSIDE, 7000) == UPLINK6_HOST


def test_published_ports_are_reachable_over_ipv6_with_the_real_client_address(world):
    six(world)
    c = world.container("six", ports={"80/tcp": [{"HostPort": "8080"}], "81/tcp": [{"HostIp": "::",
                                                                                      "HostPort": "8081"}]})
    assert c.settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                              {"HostIp": "::", "HostPort": "8080"}],
                                   "81/tcp": [{"HostIp": "::", "HostPort": "8081"}]}
    with serving((c.ns, "tcp", 80, "::"), (c.ns, "tcp", 81, "::")):
        assert ask(world.outside, "tcp", UPLINK6_HOST, 8080) == UPLINK6_OUTSIDE
        assert ask(world.outside, "tcp", UPLINK_HOST, 8080) == "::ffff:198.51.100.2"  # IPv4 as before
        assert ask(world.outside, "tcp", UPLINK6_HOST, 8081) == UPLINK6_OUTSIDE
        assert ask(world.outside, "tcp", UPLINK_HOST, 8081, timeout=0.5) is None  # [::] only
    # a port taken on :: only is taken for a dual request too (an IPv4-only container's [::] side: see
    # test_port_proxy.py)
    with pytest.raises(Conflict, match="port is already allocated"):
        world.container("six", ports={"80/tcp": [{"HostPort": "8081"}]})


def test_isolation_icc_and_internal_apply_to_ipv6(world):
    six(world, "red", "2001:db8:a::/64")
    six(world, "blue", "2001:db8:b::/64")
    six(world, "vault", "2001:db8:c::/64", internal=True)
    six(world, "quiet", "2001:db8:d::/64", options={"com.docker.network.bridge.enable_icc": "false"})
    red1, red2, blue = world.container("red"), world.container("red"), world.container("blue")
    vault = world.container("vault")
    q1, q2 = world.container("quiet"), world.container("quiet")
    assert vault.settings["Networks"]["vault"]["IPv6Gateway"] == ""
    with serving((red1.ns, "tcp", 80, "::"), (q2.ns, "tcp", 80, "::"), (world.outside, "tcp", 7000, "::")):
        assert ask(red2.ns, "tcp", red1.ip6("red"), 80) == red2.ip6("red")
        assert ask(blue.ns, "tcp", red1.ip6("red"), 80, timeout=0.5) is None
        assert ask(world.outside, "tcp", red1.ip6("red"), 80, timeout=0.5) is None  # unpublished stays private
        assert ask(vault.ns, "tcp", UPLINK6_OUTSIDE, 7000, timeout=0.5) is None
        assert ask(q1.ns, "tcp", q2.ip6("quiet"), 80, timeout=0.5) is None
        assert ask(q1.ns, "tcp", UPLINK6_OUTSIDE, 7000) == UPLINK6_HOST


def test_nothing_of_ipv6_is_left_after_detach_remove_and_reconcile(world):
    net = six(world)
    dev = f"br-{net['Id'][:12]}"
    assert [e["concat"][0] for e in world.set_elements("bridge_nets", "ip6")] == [dev]
    c = world.container("six", ports={"80/tcp": [{"HostPort": "8080"}]})
    assert world.map_elements("any_addr", "ip6") == [[{"concat": ["tcp", 8080]}, c.ip6("six")]]
    # a daemon restart rebuilds the same IPv6 state, and reconcile finds it consistent
    world.net.start()
    assert world.net.reconcile({c.id: c.pid}) == {}
    with serving((c.ns, "tcp", 80, "::")):
        assert ask(world.outside, "tcp", UPLINK6_HOST, 8080) == UPLINK6_OUTSIDE
    world.stop(c)
    assert world.net.ipam.leases() == [] and world.veths() == []
    assert world.map_elements("any_addr", "ip6") == [] and world.map_elements("any_port", "ip6") == []
    world.net.remove("six")
    for name in ("bridges", "bridge_nets", "masq_nets", "intra"):
        assert world.set_elements(name, "ip6") == []
    assert world.net.reconcile({}) == {}


def test_live_connect_adds_ipv6_and_disconnect_releases_it(world):
    six(world)
    c = world.container()  # default bridge: IPv4 only
    settings = world.connect(c.rec, c.pid, "six", {"IPAMConfig": {"IPv6Address": "2001:db8:6::42"}})
    assert settings["Networks"]["six"]["GlobalIPv6Address"] == "2001:db8:6::42"
    routes = inside(c.ns, "-6", "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [("2001:db8:6::1", "eth1")]
    with serving((world.outside, "tcp", 7000, "::")):
        assert ask(c.ns, "tcp", UPLINK6_OUTSIDE, 7000) == UPLINK6_HOST
    world.disconnect(c.rec, "six")
    assert "2001:db8:6::42" not in [a for _, a, _ in world.net.ipam.leases()]
    assert inside(c.ns, "-6", "route", "show", "default") == []
