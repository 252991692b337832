"""Networks as a user manages them, container modes, connect/disconnect, files, restart."""

from __future__ import annotations

import pytest

from coracle.errors import Conflict, InvalidParameter, NotFound
from coracle.network import NetworkManager
from coracle.netns import netns as enter
from networld import UPLINK_HOST, UPLINK_OUTSIDE, World, answers, ask, dns_query, serving, sh


def bridges(world: World) -> list[str]:
    return sorted(link["ifname"] for link in world.ip_json("link", "show", "type", "bridge"))


def test_builtin_networks_exist_after_start(world):
    names = {n["Name"]: n for n in world.net.list({})}
    assert set(names) == {"bridge", "host", "none"}
    assert names["host"]["Driver"] == "host" and names["none"]["Driver"] == "null"
    default = world.net.inspect("bridge")
    assert default["IPAM"]["Config"] == [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]
    assert default["Options"]["com.docker.network.bridge.name"] == "coracle0"
    assert bridges(world) == ["coracle0"]
    addrs = world.ip_json("addr", "show", "dev", "coracle0")[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [("172.17.0.1", 16)]
    with pytest.raises(Conflict, match="pre-defined network"):
        world.net.remove("bridge")


def test_default_bridge_avoids_a_subnet_the_host_already_routes(world, tmp_path):
    from coracle.network import netlink as bridge
    from coracle.store import Store

    # a second manager in the same host, whose default bridge must not reuse 172.17/16
    store = Store(tmp_path / "other.db")
    with enter(world.host):
        other = NetworkManager(store, str(tmp_path), bridge_name="coracle1", firewall="none")
    try:
        other.start()
        subnet = other.inspect("bridge")["IPAM"]["Config"][0]["Subnet"]
        assert subnet == "10.200.0.0/24"
    finally:
        with bridge.netns_socket(world.host) as ipr:
            bridge.delete_link(ipr, "coracle1")
        other.close()
        store.close()


def test_create_inspect_list_remove(world):
    nid = world.net.create("app", labels={"tier": "web"}, options={"com.docker.network.driver.mtu": "1400"})["Id"]
    net = world.net.inspect("app")
    assert net["Id"] == nid and world.net.inspect(nid[:6])["Name"] == "app"
    assert net["IPAM"]["Config"][0] == {"Subnet": "10.200.0.0/24", "Gateway": "10.200.0.1"}
    assert (net["Scope"], net["Driver"], net["Internal"], net["Containers"]) == ("local", "bridge", False, {})
    dev = f"br-{nid[:12]}"
    assert dev in bridges(world)
    assert world.ip_json("link", "show", "dev", dev)[0]["mtu"] == 1400
    assert [n["Name"] for n in world.net.list({"label": ["tier=web"]})] == ["app"]
    assert [n["Name"] for n in world.net.list({"type": {"custom": True}})] == ["app"]
    assert world.net.list({"name": ["nope"]}) == []
    second = world.net.create("app2")["Id"]
    assert world.net.inspect(second)["IPAM"]["Config"][0]["Subnet"] == "10.200.1.0/24"
    world.net.remove("app")
    assert dev not in bridges(world)
    with pytest.raises(NotFound, match="network app not found"):
        world.net.inspect("app")
    assert world.net.prune({}) == ["app2"]
    assert bridges(world) == ["coracle0"]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"ipam": {"Config": [{"Subnet": "10.9.0.0/33"}]}}, InvalidParameter, "invalid subnet"),
    ({"ipam": {"Config": [{"Subnet": "bogus"}]}}, InvalidParameter, "invalid subnet"),
    ({"ipam": {"Config": [{"Subnet": "10.9.0.0/24", "Gateway": "10.8.0.1"}]}}, InvalidParameter, "invalid gateway"),
    ({"ipam": {"Config": [{"Subnet": "10.9.0.0/24", "IPRange": "10.9.1.0/25"}]}}, InvalidParameter, "ip-range"),
    ({"ipam": {"Config": [{"Subnet": "172.17.5.0/24"}]}}, Conflict, "overlaps"),
    ({"driver": "overlay"}, InvalidParameter, "not supported"),
    ({"ipam": {"Config": [{"Subnet": "fd00:1::/64"}]}}, InvalidParameter, "IPv6 is not enabled"),
    ({"enable_ipv6": True, "ipam": {"Config": [{"Subnet": "fd00:1::/64", "Gateway": "fd00:2::1"}]}},
     InvalidParameter, "invalid gateway"),
    ({"enable_ipv6": True, "ipam": {"Config": [{"Subnet": "fd00:1::/64"}, {"Subnet": "fd00:2::/64"}]}},
     InvalidParameter, "only one IPv6 subnet"),
    ({"enable_ipv6": True, "ipam": {"Config": [{"Subnet": "fd00:1::/127"}]}}, InvalidParameter, "too small"),
    ({"enable_ipv6": True, "ipam": {"Config": [{"Subnet": "fd00:1::/64", "IPRange": "fd00:9::/80"}]}},
     InvalidParameter, "ip-range"),
    ({"options": {"com.docker.network.bridge.enable_icc": "maybe"}}, InvalidParameter, "enable_icc"),
    ({"options": {"com.docker.network.bridge.name": "a-name-far-too-long"}}, InvalidParameter, "bridge name"),
])
def test_bad_network_requests_are_refused_and_leave_nothing(world, kwargs, error, message):
    before = (bridges(world), world.rule_count(), len(world.net.list({})))
    with pytest.raises(error, match=message):
        world.net.create("bad", **kwargs)
    assert (bridges(world), world.rule_count(), len(world.net.list({}))) == before


def test_each_create_sees_every_network_made_or_removed_before_it(world):
    """The ranges every create checks against are kept between creates, not read again: they must follow
    each network made, removed, or made with a subnet of the user's."""
    subnet = lambda name: world.net.inspect(name)["IPAM"]["Config"][0]["Subnet"]  # noqa: E731
    world.net.create("a", ipam={"Config": [{"Subnet": "10.60.0.0/24"}]})
    with pytest.raises(Conflict, match="10.60.0.0/16 overlaps network a"):
        world.net.create("b", ipam={"Config": [{"Subnet": "10.60.0.0/16"}]})
    world.net.create("auto1")
    world.net.create("mine", ipam={"Config": [{"Subnet": "10.200.1.0/24"}]})
    world.net.create("auto2")
    assert (subnet("auto1"), subnet("auto2")) == ("10.200.0.0/24", "10.200.2.0/24")
    world.net.remove("a")
    world.net.create("b", ipam={"Config": [{"Subnet": "10.60.0.0/16"}]})
    world.net.remove("auto1")
    world.net.create("auto3")
    assert subnet("auto3") == "10.200.0.0/24"
    with pytest.raises(Conflict, match="overlaps network b"):
        world.net.create("c", ipam={"Config": [{"Subnet": "10.60.7.0/24"}]})


def test_duplicate_name_and_bad_name(world):
    world.net.create("app")
    with pytest.raises(Conflict, match="network with name app already exists"):
        world.net.create("app")
    with pytest.raises(InvalidParameter, match="invalid network name"):
        world.net.create("-bad name")


def test_network_with_endpoints_cannot_be_removed(world):
    world.net.create("app", ipam={"Config": [{"Subnet": "10.77.0.0/24", "IPRange": "10.77.0.128/25"}]})
    c = world.container("app")
    assert c.ip("app") == "10.77.0.128"
    containers = world.net.inspect("app")["Containers"]
    assert containers[c.id]["IPv4Address"] == "10.77.0.128/24" and containers[c.id]["Name"] == c.name
    with pytest.raises(Conflict, match="has active endpoints"):
        world.net.remove("app")
    world.stop(c)
    world.net.remove("app")


def test_static_address_and_mac(world):
    world.net.create("app", ipam={"Config": [{"Subnet": "10.77.0.0/24"}]})
    c = world.container("app", endpoints={"app": {"IPAMConfig": {"IPv4Address": "10.77.0.50"},
                                                  "MacAddress": "02:aa:bb:cc:dd:ee"}})
    assert c.ip("app") == "10.77.0.50"
    link = [x for x in _links(c.ns) if x["ifname"] == "eth0"][0]
    assert link["address"] == "02:aa:bb:cc:dd:ee"
    with pytest.raises(Conflict, match="Address already in use"):
        world.container("app", endpoints={"app": {"IPAMConfig": {"IPv4Address": "10.77.0.50"}}})
    assert len(world.veths()) == 1


def _links(ns: str) -> list[dict]:
    import json
    import subprocess

    pid = ns.split("/")[2]
    return json.loads(subprocess.run(["nsenter", "-t", pid, "-n", "ip", "-j", "addr"], capture_output=True,
                                     text=True, check=True).stdout)


def test_validate_refuses_what_docker_refuses(world):
    world.net.create("app", ipam={"Config": [{"Subnet": "10.77.0.0/24"}]})
    v = world.validate
    with pytest.raises(InvalidParameter, match="port publishing and the container type network mode"):
        v("container:abc", {"PortBindings": {"80/tcp": [{"HostPort": "80"}]}}, {})
    with pytest.raises(InvalidParameter, match="dns and the network mode"):
        v("container:abc", {"Dns": ["1.1.1.1"]}, {})
    with pytest.raises(NotFound, match="network nope not found"):
        v("nope", {}, {})
    with pytest.raises(InvalidParameter, match="not in subnet"):
        v("app", {}, {"app": {"IPAMConfig": {"IPv4Address": "10.78.0.5"}}})
    with pytest.raises(InvalidParameter, match="user defined networks only"):
        v("bridge", {}, {"bridge": {"IPAMConfig": {"IPv4Address": "172.17.0.9"}}})
    with pytest.raises(InvalidParameter, match="invalid hostPort"):
        v("bridge", {"PortBindings": {"80/tcp": [{"HostPort": "99999"}]}}, {})
    with pytest.raises(InvalidParameter, match="add-host"):
        v("bridge", {"ExtraHosts": ["db:not-an-ip"]}, {})
    v("app", {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}, {"app": {"Aliases": ["x"]}})


def test_none_mode_has_only_loopback_and_host_mode_nothing(world):
    c = world.container("none")
    links = _links(c.ns)
    assert [x["ifname"] for x in links] == ["lo"] and "UP" in links[0]["flags"]
    assert set(c.settings["Networks"]) == {"none"}
    assert world.net.inspect("none")["Containers"][c.id]["Name"] == c.name
    h = world.container("host")
    assert set(h.settings["Networks"]) == {"host"} and h.settings["Networks"]["host"]["IPAddress"] == ""
    assert world.veths() == []
    files = world.files(h.rec, h.settings)
    assert files["/etc/hosts"].startswith("127.0.0.1\tlocalhost\n198.51.100.1\thostbox\n")
    assert "nameserver 127.0.0.53" in files["/etc/resolv.conf"]  # the host's own copy
    world.stop(c)
    world.stop(h)
    assert world.net.inspect("none")["Containers"] == {}


def test_files_for_a_default_bridge_container(world):
    c = world.container(hostname="web", Dns=["192.0.2.53"], DnsSearch=["corp.test"], DnsOptions=["timeout:2"],
                        ExtraHosts=["db:10.1.2.3", "gw:host-gateway"])
    c.rec["Config"]["Domainname"] = "example.test"
    files = world.files(c.rec, c.settings)
    assert files["/etc/hostname"] == "web\n"
    hosts = files["/etc/hosts"].splitlines()
    assert "10.1.2.3\tdb" in hosts and "172.17.0.1\tgw" in hosts
    assert hosts[-1] == f"{c.ip()}\tweb.example.test web"
    assert files["/etc/resolv.conf"] == "nameserver 192.0.2.53\nsearch corp.test\noptions timeout:2\n"


def test_dns_options_are_honoured_on_user_networks(world):
    """Docker writes the container's --dns-option on user networks too, its ndots:N instead of ndots:0."""
    world.net.create("app")
    c = world.container("app", DnsOptions=["ndots:3", "timeout:2"], DnsSearch=["corp.test"])
    resolv = world.files(c.rec, c.settings)["/etc/resolv.conf"]
    assert resolv.splitlines() == ["nameserver 127.0.0.11", "search corp.test", "options ndots:3 timeout:2"]


def test_connect_and_disconnect_a_running_container(world):
    world.net.create("back")
    c = world.container(ports={"80/tcp": [{"HostPort": "8080"}]})
    peer = world.container("back")
    settings = world.connect(c.rec, c.pid, "back", {"Aliases": ["api"]})
    c.rec["NetworkSettings"] = c.settings = settings
    assert set(settings["Networks"]) == {"bridge", "back"}
    assert sorted(x["ifname"] for x in _links(c.ns)) == ["eth0", "eth1", "lo"]
    with pytest.raises(Conflict, match="already exists in network back"):
        world.connect(c.rec, c.pid, "back", {})
    with serving((c.ns, "tcp", 80)):
        assert ask(peer.ns, "tcp", c.ip("back"), 80) == peer.ip("back")
        assert ask(world.outside, "tcp", UPLINK_HOST, 8080) == UPLINK_OUTSIDE  # default route still via eth0
    c.rec["NetworkSettings"] = settings = world.disconnect(c.rec, "back")
    assert set(settings["Networks"]) == {"bridge"}
    assert sorted(x["ifname"] for x in _links(c.ns)) == ["eth0", "lo"]
    with pytest.raises(Conflict, match="is not connected"):
        world.disconnect(c.rec["Id"], "back")
    c.rec["NetworkSettings"] = world.connect(c.rec, c.pid, "back", {})  # again: resolver re-opened
    assert answers(dns_query(c.ns, peer.name)) == [peer.ip("back")]


def test_connect_while_stopped_takes_effect_at_next_start(world):
    world.net.create("back")
    c = world.container(attach=False)
    c.rec["NetworkSettings"] = world.connect(c.rec, None, "back", {"Aliases": ["api"]})
    assert c.rec["NetworkSettings"]["Networks"]["back"]["IPAddress"] == ""
    c.settings = world.attach(c.rec, c.pid)
    assert set(c.settings["Networks"]) == {"bridge", "back"}
    assert c.settings["Networks"]["back"]["Aliases"] == ["api"]
    assert c.settings["IPAddress"] == c.ip("bridge")  # default bridge fields at top level


def test_restart_restores_table_bridges_and_dns(world, tmp_path):
    world.net.create("app")
    a = world.container("app", ports={"80/tcp": [{"HostPort": "8080"}]})
    b = world.container("app")
    rules = world.rule_count()
    world.net.close()  # the daemon goes away; containers keep running
    with enter(world.host):
        world.net = NetworkManager(world.store, world.tmp, resolv_conf=str(tmp_path / "resolv.conf"))
    world.net.start()
    world.net.start()  # idempotent
    assert world.net.reconcile({a.id: a.pid, b.id: b.pid}) == {}  # consistent; DNS sockets re-opened
    assert world.rule_count() == rules and len(world.map_elements("any_addr")) == 1
    assert answers(dns_query(b.ns, a.name)) == [a.ip("app")]
    with serving((a.ns, "tcp", 80)):
        assert ask(world.outside, "tcp", UPLINK_HOST, 8080) == UPLINK_OUTSIDE


def test_restart_remakes_every_bridge_and_removes_only_stray_ports(world, tmp_path):
    # What the daemon's start does for each network (one link dump for all bridges' ports, one
    # rtnetlink conversation per bridge): bridges that lost their address, went down or went away
    # come back, and a port nobody owns goes while the endpoints' veths stay.
    for name in ("n0", "n1", "n2"):
        world.net.create(name)
    a = world.container("n1")
    bridges = {name: world.net.resolve(name).interface for name in ("n0", "n1", "n2")}
    world.net.close()
    host = ("ip", "netns", "exec", world.host_name, "ip")
    sh(*host, "link", "set", bridges["n0"], "down")
    sh(*host, "addr", "flush", "dev", bridges["n1"])
    sh(*host, "link", "del", bridges["n2"])
    sh(*host, "link", "add", "stray0", "type", "veth", "peer", "name", "stray1")
    sh(*host, "link", "set", "stray0", "master", bridges["n1"])
    with enter(world.host):
        world.net = NetworkManager(world.store, world.tmp, resolv_conf=str(tmp_path / "resolv.conf"))
    world.net.start()
    for name, bridge in bridges.items():
        link = world.ip_json("addr", "show", "dev", bridge)[0]
        gateway = str(world.net.resolve(name).subnet4.gateway)
        assert "UP" in link["flags"] and gateway in [x["local"] for x in link["addr_info"]], (name, link)
    assert world.net.reconcile({a.id: a.pid}) == {"veths": ["stray0"]}
    assert "stray0" not in world.veths() and len(world.veths()) == 1  # a's veth stays
    gateway = str(world.net.resolve("n1").subnet4.gateway)
    ping = sh("nsenter", f"--net={a.ns}", "busybox", "ping", "-c", "1", "-W", "2", gateway, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr  # a reaches its restored gateway
