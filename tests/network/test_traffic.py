"""Real traffic through bridges, NAT, published ports and the embedded resolver."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dnslib import RCODE

from coracle.errors import Conflict
from networld import UPLINK_HOST, UPLINK_OUTSIDE, FakeUpstream, answers, ask, dns_query, serving, sh


def local_port_range() -> tuple[int, int]:
    """The kernel's ip_local_port_range, where -P picks its host ports from."""
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return low, high


def test_outbound_is_masqueraded_to_the_uplink_address(world):
    c = world.container()
    for proto in ("tcp", "udp"):
        with serving((world.outside, proto, 7000)):
            assert ask(c.ns, proto, UPLINK_OUTSIDE, 7000) == UPLINK_HOST


def test_published_ports_reach_the_container_with_the_real_client_address(world):
    c = world.container(ports={"80/tcp": [{"HostPort": "8080"}], "53/udp": [{"HostPort": "5353"}]},
                        exposed={"80/tcp": {}, "53/udp": {}, "443/tcp": {}})
    # Docker's: both families, the [::] side through the port proxy for this IPv4-only container
    assert c.settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                              {"HostIp": "::", "HostPort": "8080"}],
                                   "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"},
                                              {"HostIp": "::", "HostPort": "5353"}], "443/tcp": None}
    with serving((c.ns, "tcp", 80), (c.ns, "udp", 53)):
        assert ask(world.outside, "tcp", UPLINK_HOST, 8080) == UPLINK_OUTSIDE
        assert ask(world.outside, "udp", UPLINK_HOST, 5353) == UPLINK_OUTSIDE
        assert ask(world.outside, "tcp", UPLINK_HOST, 8081) is None  # nothing else is open


def test_host_reaches_published_port_by_its_address_and_by_localhost(world):
    c = world.container(ports={"80/tcp": [{"HostPort": "8080"}]})
    gateway = c.settings["Networks"]["bridge"]["Gateway"]
    with serving((c.ns, "tcp", 80)):
        assert ask(world.host, "tcp", UPLINK_HOST, 8080) == UPLINK_HOST
        assert ask(world.host, "tcp", "127.0.0.1", 8080) == gateway  # loopback source masqueraded


def test_container_reaches_its_own_published_port_hairpin(world):
    """Traffic DNAT'd back into the bridge it came from is masqueraded to the gateway, so replies go back
    through the host (a direct reply would be dropped). From another network, the source is kept."""
    world.net.create("web")
    world.net.create("elsewhere")
    c = world.container("web", ports={"80/tcp": [{"HostPort": "8080"}]})
    other, stranger = world.container("web"), world.container("elsewhere")
    gateway = c.settings["Networks"]["web"]["Gateway"]
    with serving((c.ns, "tcp", 80)):
        assert ask(c.ns, "tcp", UPLINK_HOST, 8080) == gateway
        assert ask(other.ns, "tcp", UPLINK_HOST, 8080) == gateway
        assert ask(stranger.ns, "tcp", UPLINK_HOST, 8080) == stranger.ip("elsewhere")


def test_port_published_on_localhost_is_not_reachable_from_the_lan(world):
    c = world.container(ports={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}]})
    # a hostile LAN peer sends packets for 127.0.0.1 to the host's MAC (Docker < 28 forwarded them)
    out = world.outside.rsplit("/", 1)[1]
    sh("ip", "-n", out, "addr", "flush", "dev", "lo")
    sh("ip", "-n", out, "route", "add", "127.0.0.1/32", "via", UPLINK_HOST, "dev", "lan0")
    sh("ip", "netns", "exec", out, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1",
       "net.ipv4.conf.lan0.route_localnet=1")
    with serving((c.ns, "tcp", 80)):
        assert ask(world.host, "tcp", "127.0.0.1", 8081) is not None
        assert ask(world.outside, "tcp", UPLINK_HOST, 8081, timeout=0.5) is None
        assert ask(world.outside, "tcp", "127.0.0.1", 8081, timeout=0.5) is None


def test_containers_find_each_other_by_name_alias_and_short_id_on_a_user_network(world):
    world.net.create("app")
    web = world.container("app", hostname="webhost")
    db = world.container("app", endpoints={"app": {"Aliases": ["database"]}})
    web_ip, db_ip = web.ip("app"), db.ip("app")
    assert web.settings["Networks"]["app"]["DNSNames"] == [web.name, web.id[:12], "webhost"]
    for name in (db.name, "database", db.id[:12]):
        assert answers(dns_query(web.ns, name)) == [db_ip]
    assert answers(dns_query(db.ns, "webhost", tcp=True)) == [web_ip]
    assert answers(dns_query(db.ns, ".".join(reversed(web_ip.split("."))) + ".in-addr.arpa", "PTR")) == \
        [f"{web.name}.app."]
    # and the answer is usable: connect by name
    with serving((web.ns, "tcp", 80)):
        assert ask(db.ns, "tcp", answers(dns_query(db.ns, web.name))[0], 80) == db_ip
    # records follow containers: gone after detach; other names go upstream
    upstream = FakeUpstream(world.outside)
    try:
        assert answers(dns_query(web.ns, "ext.example.test")) == ["203.0.113.7"]
        world.stop(db)
        assert dns_query(web.ns, "database").header.rcode == RCODE.NXDOMAIN
    finally:
        upstream.close()
    resolv = world.files(web.rec, web.settings)["/etc/resolv.conf"]
    assert resolv.splitlines() == ["nameserver 127.0.0.11", "search example.test", "options ndots:0"]


def test_default_bridge_has_no_embedded_resolver(world):
    c = world.container()
    with pytest.raises(OSError):
        dns_query(c.ns, "anything")
    resolv = world.files(c.rec, c.settings)["/etc/resolv.conf"]
    assert resolv.splitlines()[0] == f"nameserver {UPLINK_OUTSIDE}"
    assert "127.0.0.53" not in resolv  # loopback resolvers are unreachable from a container


def test_networks_are_isolated_from_each_other(world):
    world.net.create("red")
    world.net.create("blue")
    red1, red2 = world.container("red"), world.container("red")
    blue, default = world.container("blue"), world.container()
    with serving((red1.ns, "tcp", 80)):
        assert ask(red2.ns, "tcp", red1.ip("red"), 80) == red2.ip("red")
        assert ask(blue.ns, "tcp", red1.ip("red"), 80, timeout=0.5) is None
        assert ask(default.ns, "tcp", red1.ip("red"), 80, timeout=0.5) is None
        assert ask(world.outside, "tcp", red1.ip("red"), 80, timeout=0.5) is None  # unpublished stays private


def test_internal_network_cannot_reach_outside(world):
    world.net.create("vault", internal=True)
    a, b = world.container("vault"), world.container("vault")
    assert a.settings["Networks"]["vault"]["Gateway"] == ""
    with serving((world.outside, "tcp", 7000), (b.ns, "tcp", 80)):
        assert ask(a.ns, "tcp", UPLINK_OUTSIDE, 7000, timeout=0.5) is None
        assert ask(a.ns, "tcp", b.ip("vault"), 80) == a.ip("vault")


def test_icc_off_drops_traffic_between_containers_of_a_network(world):
    world.net.create("quiet", options={"com.docker.network.bridge.enable_icc": "false"})
    a, b = world.container("quiet"), world.container("quiet")
    with serving((b.ns, "tcp", 80), (world.outside, "tcp", 7000)):
        assert ask(a.ns, "tcp", b.ip("quiet"), 80, timeout=0.5) is None
        assert ask(a.ns, "tcp", UPLINK_OUTSIDE, 7000) == UPLINK_HOST  # the way out still works


def test_a_taken_port_is_refused_and_nothing_is_left_half_made(world):
    world.container(ports={"80/tcp": [{"HostPort": "8080"}]})
    before = (world.veths(), world.net.ipam.leases(), world.map_elements("any_addr"))
    with pytest.raises(Conflict, match=r"Bind for 0.0.0.0:8080 failed: port is already allocated"):
        world.container(ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]})
    with pytest.raises(Conflict, match=r"Bind for 127.0.0.1:8080 failed: port is already allocated"):
        world.container(ports={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]})
    with (serving((world.host, "tcp", 9090)),  # a process of the host holds this one
          pytest.raises(Conflict, match=r"Bind for 0.0.0.0:9090 failed: address already in use")):
        world.container(ports={"80/tcp": [{"HostPort": "9090"}], "81/tcp": [{"HostPort": "9091"}]})
    assert (world.veths(), world.net.ipam.leases(), world.map_elements("any_addr")) == before
    # the same port on another protocol is fine
    world.container(ports={"80/udp": [{"HostPort": "8080"}]})


def test_detach_and_reconcile_leave_no_veth_lease_or_nft_element(world):
    world.net.create("app")
    a = world.container(ports={"80/tcp": [{"HostPort": "8080"}]})
    b = world.container("app", ports={"80/tcp": [{"HostPort": "8081"}]})
    c = world.container(ports={"80/tcp": [{"HostPort": "8082"}]})
    assert len(world.veths()) == 3 and len(world.map_elements("any_addr")) == 3
    world.stop(a)
    world.net.detach(a.id)  # idempotent
    assert len(world.veths()) == 2 and len(world.map_elements("any_addr")) == 2
    assert {lease[2] for lease in world.net.ipam.leases()} == {b.id, c.id}
    # c dies while the daemon is away: reconcile finds its leftovers
    c.proc.kill()
    c.proc.wait()
    dry = world.net.reconcile({b.id: b.pid}, dry_run=True)
    assert [e["container"] for e in dry["endpoints"]] == [c.id]
    assert len(dry["ports"]) == 2 and len(world.map_elements("any_addr")) == 2  # 0.0.0.0 and [::]
    report = world.net.reconcile({b.id: b.pid})
    assert [m.host_port for m in world.net.ports.proxy.serving()] == [8081]  # [::]:8082 closed
    # (c's veth may or may not still exist: the kernel tears a dead namespace down asynchronously)
    assert {k: v for k, v in report.items() if k != "veths"} == {k: v for k, v in dry.items() if k != "veths"}
    assert world.map_elements("any_addr") == [[{"concat": ["tcp", 8081]}, b.ip("app")]]
    assert {lease[2] for lease in world.net.ipam.leases()} == {b.id}
    assert len(world.veths()) == 1
    world.stop(b)
    assert world.veths() == [] and world.net.ipam.leases() == [] and world.map_elements("any_addr") == []
    assert world.net.reconcile({}) == {}


def test_50_concurrent_attaches_get_50_distinct_addresses(world):
    world.net.create("crowd")
    containers = [world.container("crowd", attach=False) for _ in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        settings = list(pool.map(lambda c: world.attach(c.rec, c.pid), containers))
    addresses = [s["Networks"]["crowd"]["IPAddress"] for s in settings]
    assert len(set(addresses)) == 50
    assert sorted(lease[1] for lease in world.net.ipam.leases()) == sorted(addresses)
    assert len(world.veths()) == 50
    for c, s in zip(containers, settings, strict=True):
        c.settings = s
    with serving((containers[0].ns, "tcp", 80)):
        assert ask(containers[49].ns, "tcp", addresses[0], 80) == addresses[49]


def test_1000_published_ports_are_1000_map_elements_under_the_same_rules(world):
    rules = world.rule_count()
    bindings = {f"{10000 + i}/tcp": [{"HostPort": str(20000 + i)}] for i in range(1000)}
    c = world.container(ports=bindings)
    assert len(world.map_elements("any_addr")) == 1000
    assert len(world.map_elements("any_port")) == 1000
    assert world.rule_count() == rules
    with serving((c.ns, "tcp", 10500)):
        assert ask(world.outside, "tcp", UPLINK_HOST, 20500) == UPLINK_OUTSIDE
    world.stop(c)
    assert world.map_elements("any_addr") == []


def test_publish_all_picks_ephemeral_ports_that_work(world):
    c = world.container(exposed={"80/tcp": {}}, publish_all=True)
    port = int(c.settings["Ports"]["80/tcp"][0]["HostPort"])
    low, high = local_port_range()
    assert low <= port <= high
    with serving((c.ns, "tcp", 80)):
        assert ask(world.outside, "tcp", UPLINK_HOST, port) == UPLINK_OUTSIDE


def test_reconcile_removes_strays_left_by_a_crash_mid_attach(world):
    keep = world.container(ports={"80/tcp": [{"HostPort": "8080"}]})
    host = world.host_name
    sh("ip", "-n", host, "link", "add", "vethstray", "type", "veth", "peer", "name", "vethstray2")
    sh("ip", "-n", host, "link", "set", "vethstray", "master", "coracle0")
    sh("ip", "netns", "exec", host, "nft", "add", "element", "ip", "coracle", "any_addr",
       "{ tcp . 9999 : 172.17.0.99 }")
    sh("ip", "netns", "exec", host, "nft", "add", "element", "ip", "coracle", "any_port", "{ tcp . 9999 : 80 }")
    report = world.net.reconcile({keep.id: keep.pid})
    assert report == {"veths": ["vethstray"], "nft_elements": ["0.0.0.0:9999/tcp -> 172.17.0.99:80"]}
    assert "vethstray" not in world.veths()
    assert world.map_elements("any_addr") == [[{"concat": ["tcp", 8080]}, keep.ip()]]
    assert world.net.reconcile({keep.id: keep.pid}) == {}


def test_ephemeral_ports_are_handed_out_in_order_as_docker_does(world):
    """Docker's port allocator: the start of ip_local_port_range first, then the port after the last
    one handed out (a port just released is not reused at once)."""
    low, _ = local_port_range()
    a = world.container(exposed={"80/tcp": {}}, publish_all=True)
    b = world.container(ports={"80/tcp": [{"HostPort": ""}]})
    first, second = (int(c.settings["Ports"]["80/tcp"][0]["HostPort"]) for c in (a, b))
    assert (first, second) == (low, low + 1)
    world.stop(a)
    c = world.container(exposed={"80/tcp": {}}, publish_all=True)
    assert int(c.settings["Ports"]["80/tcp"][0]["HostPort"]) == low + 2
    with serving((c.ns, "tcp", 80)):
        assert ask(world.outside, "tcp", UPLINK_HOST, low + 2) == UPLINK_OUTSIDE
