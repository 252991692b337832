"""macvlan and ipvlan networks with real traffic to a neighbour on the parent's segment.

The world (conftest.py): a throwaway "host" namespace whose up0 is a veth to
lan0 in a second namespace, the neighbour (198.51.100.2 on 198.51.100.0/24,
the host being .1). Networks take up0 as their parent, as `docker network
create -d macvlan -o parent=eth0` takes a host's LAN interface.

Docker's behaviour checked: containers are hosts of the parent's segment, with
their own address (no NAT) and, for macvlan, their own MAC; the segment's
--subnet may contain the host's own address; --ip-range, --gateway and
--aux-address shape allocation; `parent=IFACE.VLAN` makes the 802.1q
sub-interface and `network rm` removes it; ipvlan l2 and l3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from coracle.errors import Conflict, InvalidParameter
from networld import UPLINK_HOST, UPLINK_OUTSIDE, World, ask, serving, sh

LAN = {"Subnet": "198.51.100.0/24", "Gateway": UPLINK_OUTSIDE, "IPRange": "198.51.100.128/25",
       "AuxiliaryAddresses": {"printer": "198.51.100.128"}}


def links(ns: str) -> list[dict]:
    return json.loads(sh("nsenter", f"--net={ns}", "ip", "-j", "-d", "link", "show").stdout)


def kernel_has(world: World, kind: str, **extra: str) -> bool:
    """Whether the test host's kernel makes links of this kind (a probe on up0, removed at once)."""
    args = [f"{k} {v}" for k, v in extra.items()]
    made = sh("ip", "netns", "exec", world.host_name, "sh", "-c",
              f"ip link add link up0 name probe0 type {kind} {' '.join(args)}", check=False)
    sh("ip", "netns", "exec", world.host_name, "ip", "link", "del", "probe0", check=False)
    return made.returncode == 0


def test_macvlan_containers_are_hosts_of_the_parent_segment(world: World) -> None:
    world.net.create("lan", driver="macvlan", options={"parent": "up0"}, ipam={"Config": [LAN]})
    a = world.container("lan")
    b = world.container("lan", endpoints={"lan": {"IPAMConfig": {"IPv4Address": "198.51.100.77"}}})
    # the range starts at .128, which is an auxiliary address: the first container gets .129
    assert a.ip("lan") == "198.51.100.129" and b.ip("lan") == "198.51.100.77"
    eth0 = next(x for x in links(a.ns) if x["ifname"] == "eth0")
    assert eth0["linkinfo"]["info_kind"] == "macvlan" and eth0["linkinfo"]["info_data"]["mode"] == "bridge"
    assert eth0["address"] == a.settings["Networks"]["lan"]["MacAddress"]
    with serving((world.outside, "tcp", 7000), (a.ns, "tcp", 80)):
        assert ask(a.ns, "tcp", UPLINK_OUTSIDE, 7000) == a.ip("lan")  # the neighbour sees the container itself
        assert ask(world.outside, "tcp", a.ip("lan"), 80) == UPLINK_OUTSIDE  # and reaches it directly
        assert ask(b.ns, "tcp", a.ip("lan"), 80) == b.ip("lan")  # bridge mode: containers reach each other
    assert world.veths() == []  # nothing on the host per endpoint
    world.stop(a)
    world.stop(b)
    world.net.remove("lan")
    assert "up0" in [x["ifname"] for x in world.ip_json("link", "show")]  # the parent stays


def test_macvlan_default_route_goes_to_the_segments_gateway(world: World) -> None:
    world.net.create("lan", driver="macvlan", options={"parent": "up0"}, ipam={"Config": [LAN]})
    c = world.container("lan")
    routes = json.loads(sh("nsenter", f"--net={c.ns}", "ip", "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [(UPLINK_OUTSIDE, "eth0")]
    world.stop(c)


def test_disconnect_takes_the_link_away_even_renamed_with_another_mac(world: World) -> None:
    """A container with NET_ADMIN may rename its link and change its MAC (the attack: stay on a network
    it was disconnected from, with an address that goes to the next container). The link is told by
    its lower device, so `network disconnect` still takes it, and only it."""
    world.net.create("lan", driver="macvlan", options={"parent": "up0"}, ipam={"Config": [LAN]})
    c = world.container("lan")
    inside = ("nsenter", f"--net={c.ns}", "ip", "link")
    sh(*inside, "add", "own0", "type", "veth", "peer", "name", "own1")  # its own links: not ours to remove
    sh(*inside, "set", "eth0", "down")
    sh(*inside, "set", "eth0", "name", "hidden0", "address", "02:00:00:00:00:99")
    sh(*inside, "set", "hidden0", "up")
    with serving((world.outside, "tcp", 7000)):
        assert ask(c.ns, "tcp", UPLINK_OUTSIDE, 7000) == c.ip("lan")  # still on the segment, under its new name
        world.disconnect(c.rec, "lan", c.pid)
        assert ask(c.ns, "tcp", UPLINK_OUTSIDE, 7000) is None
    assert sorted(x["ifname"] for x in links(c.ns)) == ["lo", "own0", "own1"]
    world.stop(c)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"options": {}}, InvalidParameter, "needs a parent interface"),
    ({"options": {"parent": "nosuch0"}}, InvalidParameter, "parent interface was not found"),
    ({"options": {"parent": "up0", "macvlan_mode": "passthru"}}, InvalidParameter, "invalid macvlan_mode"),
    ({"options": {"parent": "up0", "colour": "blue"}}, InvalidParameter, "unknown option"),
    ({"options": {"parent": "up0.5000"}}, InvalidParameter, "VLAN 1-4094"),
    ({"options": {"parent": "up0"}, "ipam": {"Config": [{**LAN, "AuxiliaryAddresses": {"x": "10.0.0.1"}}]}},
     InvalidParameter, "not in subnet"),
])
def test_bad_macvlan_requests_are_refused_and_leave_nothing(world: World, kwargs: dict, error: type,
                                                            message: str) -> None:
    before = (sorted(x["ifname"] for x in world.ip_json("link", "show")), len(world.net.list({})))
    with pytest.raises(error, match=message):
        world.net.create("bad", driver="macvlan", **kwargs)
    assert (sorted(x["ifname"] for x in world.ip_json("link", "show")), len(world.net.list({}))) == before


def test_one_parent_serves_one_network_and_addresses_stay_in_the_subnet(world: World) -> None:
    world.net.create("lan", driver="macvlan", options={"parent": "up0"}, ipam={"Config": [LAN]})
    with pytest.raises(Conflict, match="already using parent interface up0"):
        world.net.create("lan2", driver="macvlan", options={"parent": "up0"},
                         ipam={"Config": [{"Subnet": "192.0.2.0/24"}]})
    with pytest.raises(InvalidParameter, match="auxiliary address"):
        world.container("lan", endpoints={"lan": {"IPAMConfig": {"IPv4Address": "198.51.100.128"}}})
    with pytest.raises(InvalidParameter, match="gateway"):
        world.container("lan", endpoints={"lan": {"IPAMConfig": {"IPv4Address": UPLINK_OUTSIDE}}})


@contextmanager
def vlan_on_the_neighbour(world: World, vid: int, address: str) -> Iterator[None]:
    sh("ip", "netns", "exec", world.outside_name, "ip", "link", "add", "link", "lan0", "name", f"lan0.{vid}",
       "type", "vlan", "id", str(vid))
    try:
        sh("ip", "netns", "exec", world.outside_name, "ip", "addr", "add", address, "dev", f"lan0.{vid}")
        sh("ip", "netns", "exec", world.outside_name, "ip", "link", "set", f"lan0.{vid}", "up")
        yield
    finally:
        sh("ip", "netns", "exec", world.outside_name, "ip", "link", "del", f"lan0.{vid}", check=False)


def test_a_vlan_parent_is_made_for_the_network_and_removed_with_it(world: World) -> None:
    if not kernel_has(world, "vlan", id="7"):
        with pytest.raises(InvalidParameter, match="no 8021q support"):
            world.net.create("v10", driver="macvlan", options={"parent": "up0.10"},
                             ipam={"Config": [{"Subnet": "10.10.10.0/24", "Gateway": "10.10.10.2"}]})
        assert "up0.10" not in [x["ifname"] for x in world.ip_json("link", "show")]
        pytest.skip("this kernel has no 802.1q VLAN support: refused clearly, traffic not checked")
    with vlan_on_the_neighbour(world, 10, "10.10.10.2/24"):
        world.net.create("v10", driver="macvlan", options={"parent": "up0.10"},
                         ipam={"Config": [{"Subnet": "10.10.10.0/24", "Gateway": "10.10.10.2"}]})
        assert "up0.10" in [x["ifname"] for x in world.ip_json("link", "show")]
        c = world.container("v10")
        with serving((world.outside, "tcp", 7000, "10.10.10.2")):
            assert ask(c.ns, "tcp", "10.10.10.2", 7000) == c.ip("v10")
            assert ask(c.ns, "tcp", UPLINK_OUTSIDE, 7000) is None  # untagged segment: not this network
        world.stop(c)
        world.net.remove("v10")
        assert "up0.10" not in [x["ifname"] for x in world.ip_json("link", "show")]


def test_ipvlan_l2_and_l3(world: World) -> None:
    if not kernel_has(world, "ipvlan", mode="l2"):
        with pytest.raises(InvalidParameter, match="no ipvlan support"):
            world.net.create("l2", driver="ipvlan", options={"parent": "up0"}, ipam={"Config": [LAN]})
        assert world.net.list({"name": ["l2"]}) == []
        pytest.skip("this kernel has no ipvlan support: refused clearly, traffic not checked")
    world.net.create("l2", driver="ipvlan", options={"parent": "up0"}, ipam={"Config": [LAN]})
    c = world.container("l2")
    parent_mac = world.ip_json("link", "show", "up0")[0]["address"]
    assert c.settings["Networks"]["l2"]["MacAddress"] == parent_mac  # ipvlan links share the parent's MAC
    with serving((world.outside, "tcp", 7000)):
        assert ask(c.ns, "tcp", UPLINK_OUTSIDE, 7000) == c.ip("l2")
    world.stop(c)
    world.net.remove("l2")
    world.net.create("l3", driver="ipvlan", options={"parent": "up0", "ipvlan_mode": "l3"},
                     ipam={"Config": [{"Subnet": "10.20.0.0/24"}]})
    # the segment's router (the neighbour) reaches the network through the host, as l3 mode requires
    sh("ip", "netns", "exec", world.outside_name, "ip", "route", "add", "10.20.0.0/24", "via", UPLINK_HOST)
    d = world.container("l3")
    with serving((world.outside, "tcp", 7000)):
        assert ask(d.ns, "tcp", UPLINK_OUTSIDE, 7000) == d.ip("l3")
    world.stop(d)
