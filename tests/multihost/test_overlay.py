"""Overlay networks across three simulated hosts (tests/multihost/cluster.py), proven with traffic.

One cluster (3 hosts, 1 etcd member) serves this module; each test removes
what it made, and `clean_cluster` checks that nothing is left on any host or
in etcd afterwards: no links, FDB or neighbour entries, no keys.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster import UNDERLAY, Cluster, cluster, underlay_capture, wait_for
from harness import unique
from networld import Server, ask

from coracle.network.drivers.overlay import device_names
from coracle.network.overlay_encryption import unsupported_reason

# namespaces as hosts, etcd and daemons: the root tier
pytestmark = pytest.mark.root

LAN_IP = f"{UNDERLAY}.1"  # an address of the underlay namespace: "outside" for the containers


@pytest.fixture(scope="module")
def world() -> Iterator[Cluster]:
    with cluster() as c:
        yield c


@pytest.fixture
def clean_cluster(world: Cluster) -> Iterator[Cluster]:
    """The module's cluster; afterwards every container and overlay network is removed, and nothing may be left."""
    try:
        yield world
    finally:
        for host in world.hosts:
            ids = host.docker("ps", "-aq").stdout.split()
            if ids:
                host.docker("rm", "-f", *ids, check=False)
        for net in world.hosts[0].docker("network", "ls", "--filter", "driver=overlay", "-q").stdout.split():
            world.hosts[0].docker("network", "rm", net, check=False)
    deadline = time.monotonic() + 10
    while (left := world.clean()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == {}


def test_network_appears_on_every_host_with_the_same_id_subnet_and_vni(clean_cluster: Cluster) -> None:
    c = clean_cluster
    name = unique("ov")
    nid = c.hosts[1].docker("network", "create", "-d", "overlay", "--subnet", "10.77.0.0/24", name).stdout.strip()
    wait_for(lambda: c.visible_everywhere(name), "the network on every host")
    seen = {h.docker("network", "inspect", "-f", "{{.Id}} {{range .IPAM.Config}}{{.Subnet}}{{end}} {{.Driver}}",
                     name).stdout.strip() for h in c.hosts}
    assert seen == {f"{nid} 10.77.0.0/24 overlay"}
    vnis = {tuple(link["linkinfo"]["info_data"]["id"] for link in h.ip_json("-d", "link", "show", "type", "vxlan"))
            for h in c.hosts}
    assert len(vnis) == 1 and len(next(iter(vnis))) == 1  # one VXLAN device per host, same VNI everywhere
    details = c.hosts[0].ip_json("-d", "link", "show", "type", "vxlan")[0]
    assert details["linkinfo"]["info_data"].get("learning") is False
    assert details["mtu"] == 1450  # the inner frames': the underlay's 1500 minus the VXLAN overhead


def test_concurrent_creates_never_share_a_subnet_or_vni(clean_cluster: Cluster) -> None:
    c = clean_cluster
    names = [unique("ov") for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: c.hosts[i % 3].docker("network", "create", "-d", "overlay", names[i]), range(6)))
    for name in names:
        wait_for(lambda name=name: c.visible_everywhere(name), "every network on every host")
    subnets = {c.hosts[0].docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
                                 n).stdout.strip() for n in names}
    assert len(subnets) == 6
    vnis = [link["linkinfo"]["info_data"]["id"] for link in c.hosts[2].ip_json("-d", "link", "show", "type", "vxlan")]
    assert len(set(vnis)) == 6


def test_same_name_twice_across_hosts_is_refused(clean_cluster: Cluster) -> None:
    c = clean_cluster
    name = c.overlay()
    second = c.hosts[2].docker("network", "create", "-d", "overlay", name, check=False)
    assert second.returncode != 0 and "already exists" in second.stderr


def test_cross_host_tcp_and_udp_by_name_and_ip(clean_cluster: Cluster) -> None:
    c = clean_cluster
    net = c.overlay()
    web = unique("web")
    c.hosts[0].docker("run", "-d", "--name", web, "--network", net, "--network-alias", "db", "busybox", "sh", "-c",
                      "echo served-by-h0 > /index.html; httpd -f -p 80 -h /")
    web_ip = c.hosts[0].address_of(web, net)
    client = unique("cl")
    c.hosts[1].docker("run", "-d", "--name", client, "--network", net, "busybox", "sleep", "600")

    def fetch(target: str) -> str:
        return c.hosts[1].docker("exec", client, "sh", "-c", f"wget -q -O - http://{target}/ 2>&1 || true").stdout

    wait_for(lambda: "served-by-h0" in fetch(web), "TCP by name across hosts")
    assert "served-by-h0" in fetch(web_ip)
    assert "served-by-h0" in fetch("db")  # the alias
    short_id = c.hosts[0].docker("inspect", "-f", "{{.Id}}", web).stdout.strip()[:12]
    assert "served-by-h0" in fetch(short_id)
    mtu = c.hosts[1].docker("exec", client, "cat", "/sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == "1450"  # the underlay's 1500 minus the VXLAN overhead
    # UDP both ways, by the address the name resolves to on the other host
    resolved = c.hosts[1].docker("exec", client, "nslookup", web).stdout
    assert web_ip in resolved
    client_ip = c.hosts[1].address_of(client, net)
    for proto in ("udp", "tcp"):
        server = Server(f"/proc/{c.hosts[0].pid_of(web)}/ns/net", proto, 5353)
        try:  # the server sees the client's own overlay address: no NAT between hosts
            assert ask(f"/proc/{c.hosts[1].pid_of(client)}/ns/net", proto, web_ip, 5353) == client_ip
        finally:
            server.close()
    # the data plane is static: the peer's MAC came from etcd, not from flooding or learning
    assert any(c.hosts[0].ip in line for line in c.hosts[1].remote_fdb())


def test_sixty_containers_in_parallel_get_sixty_distinct_addresses(clean_cluster: Cluster) -> None:
    c = clean_cluster
    net = c.overlay("--subnet", "10.78.0.0/24")

    def run(i: int) -> str:
        host = c.hosts[i % 3]
        cid = host.docker("run", "-d", "--network", net, "busybox", "sleep", "600", timeout=120).stdout.strip()
        return host.address_of(cid, net)

    with ThreadPoolExecutor(12) as pool:
        addresses = list(pool.map(run, range(60)))
    assert len(set(addresses)) == 60
    assert all(a.startswith("10.78.0.") for a in addresses)


def test_rm_is_refused_while_any_host_has_an_endpoint_then_removes_everywhere(clean_cluster: Cluster) -> None:
    c = clean_cluster
    net = c.overlay()
    ctr = unique("c")
    c.hosts[2].docker("run", "-d", "--name", ctr, "--network", net, "busybox", "sleep", "600")
    refused = c.hosts[0].docker("network", "rm", net, check=False)
    assert refused.returncode != 0 and "active endpoints" in refused.stderr
    c.hosts[2].docker("rm", "-f", ctr)
    wait_for(lambda: c.hosts[0].docker("network", "rm", net, check=False).returncode == 0, "the removal")
    wait_for(lambda: not any(h.docker("network", "inspect", net, check=False).returncode == 0 for h in c.hosts),
             "the network gone from every host")


def test_overlays_are_isolated_and_internal_has_no_way_out(clean_cluster: Cluster) -> None:
    c = clean_cluster
    a, b, internal = c.overlay(), c.overlay(on=1), c.overlay("--internal", on=2)
    target = unique("t")
    c.hosts[1].docker("run", "-d", "--name", target, "--network", a, "busybox", "sh", "-c",
                      "echo secret > /index.html; httpd -f -p 80 -h /")
    target_ip = c.hosts[1].address_of(target, a)
    server = subprocess.Popen(["ip", "netns", "exec", c.underlay, "busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"])
    try:
        probe = "wget -q -O - http://{} >/dev/null 2>&1 && echo reached || echo blocked"
        same = c.hosts[0].docker("run", "--rm", "--network", a, "busybox", "sh", "-c",
                                 f"for i in 1 2 3 4 5 6 7 8 9 10; do {probe.format(target_ip + '/')} | grep -q reached "
                                 "&& echo reached && break; sleep 0.5; done").stdout
        assert "reached" in same
        other = c.hosts[0].docker("run", "--rm", "--network", b, "busybox", "sh", "-c",
                                  "timeout 3 " + probe.format(target_ip + '/')).stdout
        assert "blocked" in other
        bridged = c.hosts[1].docker("run", "--rm", "busybox", "sh", "-c",  # the target's own host, default bridge
                                    "timeout 3 " + probe.format(target_ip + '/')).stdout
        assert "blocked" in bridged
        out = c.hosts[2].docker("run", "--rm", "--network", a, "busybox", "sh", "-c",
                                "timeout 3 " + probe.format(f"{LAN_IP}:8080/hostname")).stdout
        assert "reached" in out  # the local way out, NATed through the host
        shut = c.hosts[2].docker("run", "--rm", "--network", internal, "busybox", "sh", "-c",
                                 "timeout 3 " + probe.format(f"{LAN_IP}:8080/hostname")).stdout
        assert "blocked" in shut
    finally:
        server.kill()
        server.wait()


def test_published_port_on_the_host_running_the_container(clean_cluster: Cluster) -> None:
    c = clean_cluster
    net = c.overlay()
    c.hosts[1].docker("run", "-d", "--network", net, "-p", "18080:80", "busybox", "sh", "-c",
                      "echo published-on-h1 > /index.html; httpd -f -p 80 -h /")

    def get() -> str:
        return subprocess.run(["ip", "netns", "exec", c.underlay, "busybox", "wget", "-q", "-O", "-",
                               f"http://{c.hosts[1].ip}:18080/"], capture_output=True, text=True, timeout=10).stdout

    wait_for(lambda: "published-on-h1" in get(), "the published port")


def test_overlay_without_a_cluster_store_is_a_clear_error(fresh_daemon) -> None:  # type: ignore[no-untyped-def]
    fresh_daemon.start()
    out = fresh_daemon.docker("network", "create", "-d", "overlay", unique("ov"), check=False)
    assert out.returncode != 0 and "--cluster-store" in out.stderr


def test_sdk_connect_disconnect_and_a_static_address_taken_elsewhere(clean_cluster: Cluster) -> None:
    c = clean_cluster
    net = c.overlay("--subnet", "10.79.0.0/24")
    observer = unique("ob")
    c.hosts[0].docker("run", "-d", "--name", observer, "--network", net, "busybox", "sleep", "600")
    sdk = c.hosts[1].daemon.sdk()
    try:
        late = sdk.containers.run("busybox", ["sh", "-c", "echo joined-late > /index.html; httpd -f -p 80 -h /"],
                                  detach=True, name=unique("late"))
        sdk.networks.get(net).connect(late, ipv4_address="10.79.0.50", aliases=["later"])

        def fetch() -> str:
            return c.hosts[0].docker("exec", observer, "sh", "-c",
                                     "timeout 3 wget -q -O - http://later/ 2>&1 || true").stdout

        wait_for(lambda: "joined-late" in fetch(), "the connected container reachable by alias from another host")
        taken = c.hosts[2].docker("run", "-d", "--network", net, "--ip", "10.79.0.50", "busybox", "sleep", "600",
                                  check=False)
        assert taken.returncode != 0 and "already in use" in taken.stderr
        sdk.networks.get(net).disconnect(late)
        wait_for(lambda: "joined-late" not in fetch(), "the disconnected container gone from the other host")
    finally:
        sdk.close()


def test_a_container_cannot_stay_on_an_overlay_it_was_disconnected_from(clean_cluster: Cluster) -> None:
    """A container's link is a macvlan of the VXLAN device, inside its own namespace: with NET_ADMIN it
    may rename it (the attack: keep the network, and an address the next container gets). `network
    disconnect` tells the link by its lower device and still takes it away."""
    c = clean_cluster
    net = c.overlay()
    h0, h1 = c.hosts[0], c.hosts[1]
    web, sly = unique("web"), unique("sly")
    h1.docker("run", "-d", "--name", web, "--network", net, "busybox", "sh", "-c",
              "echo still-here > /index.html; httpd -f -p 80 -h /")
    web_ip = h1.address_of(web, net)
    h0.docker("run", "-d", "--name", sly, "--cap-add", "NET_ADMIN", "--network", net, "busybox", "sleep", "600")

    def fetch() -> str:
        return h0.docker("exec", sly, "sh", "-c", f"timeout 3 wget -q -O - http://{web_ip}/ 2>&1 || true").stdout

    wait_for(lambda: "still-here" in fetch(), "the server reachable across hosts")
    h0.docker("exec", sly, "sh", "-c",
              "ip link set eth0 down && ip link set eth0 name hidden0 && ip link set hidden0 up")
    wait_for(lambda: "still-here" in fetch(), "the renamed link still on the overlay")
    h0.docker("network", "disconnect", net, sly)
    assert "still-here" not in fetch()
    assert "hidden0" not in h0.docker("exec", sly, "ip", "link").stdout


def test_system_check_finds_and_remakes_a_hosts_lost_tunnel(clean_cluster: Cluster) -> None:
    c = clean_cluster
    net = c.overlay()
    h0, h1 = c.hosts[0], c.hosts[1]
    server = unique("web")
    h1.docker("run", "-d", "--name", server, "--network", net, "busybox", "sh", "-c",
              "echo through-the-tunnel > /index.html; httpd -f -p 80 -h /")
    server_ip = h1.address_of(server, net)
    client = unique("cl")
    h0.docker("run", "-d", "--name", client, "--network", net, "busybox", "sleep", "600")

    def fetch() -> str:
        return h0.docker("exec", client, "sh", "-c", f"timeout 3 wget -q -O - http://{server_ip}/ 2>&1 || true").stdout

    wait_for(lambda: "through-the-tunnel" in fetch(), "the server reachable across hosts")
    nid = h0.docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    subprocess.run(["ip", "-n", h0.daemon.netns, "link", "del", device_names(nid)[1]], check=True)  # an admin's slip
    assert "through-the-tunnel" not in fetch()  # the VXLAN device, its links and every remote entry of h0 are gone
    report = h0.cli("system", "check", "--dry-run").stdout
    assert f"VXLAN device of {net}" in report and f"entries of {server} ({server_ip}) on {h1.ip}" in report, report
    assert f"on {net} ({h0.address_of(client, net)})" in report, report  # the client's link went with the device
    h0.cli("system", "check")
    wait_for(lambda: "through-the-tunnel" in fetch(), "the server reachable again once the check re-made the tunnel")
    assert "No inconsistencies found" in h0.cli("system", "check", "--dry-run").stdout


def fetch_across(c: Cluster, net: str, word: str) -> None:
    """A web server on host 0 serving `word`, fetched by name from a container on host 1."""
    web, client = unique("web"), unique("cl")
    c.hosts[0].docker("run", "-d", "--name", web, "--network", net, "busybox", "sh", "-c",
                      f"echo {word} > /index.html; httpd -f -p 80 -h /")
    c.hosts[1].docker("run", "-d", "--name", client, "--network", net, "busybox", "sleep", "600")
    wait_for(lambda: word in c.hosts[1].docker("exec", client, "sh", "-c",
                                               f"timeout 3 wget -q -O - http://{web}/ 2>&1 || true").stdout,
             "the page fetched across hosts")


def test_plain_overlay_traffic_crosses_the_underlay_as_cleartext_vxlan(clean_cluster: Cluster) -> None:
    c = clean_cluster
    word = unique("plain-page-")
    with underlay_capture(c, word) as seen:
        fetch_across(c, c.overlay(), word)
    assert seen["vxlan"] > 0 and seen["marker"] > 0 and seen["esp"] == 0


@pytest.mark.skipif(unsupported_reason() is not None, reason=f"{unsupported_reason()}")
def test_encrypted_overlay_crosses_the_underlay_as_esp_only(clean_cluster: Cluster) -> None:
    c = clean_cluster
    word = unique("secret-page-")
    net = c.overlay("--opt", "encrypted")
    with underlay_capture(c, word) as seen:
        fetch_across(c, net, word)
    assert seen["esp"] > 0 and seen["vxlan"] == 0 and seen["marker"] == 0
    assert c.hosts[0].docker("network", "inspect", "-f", "{{json .Options}}", net).stdout.strip() == \
        '{"encrypted":""}'


@pytest.mark.skipif(unsupported_reason() is None, reason="this kernel can encrypt overlays")
def test_encrypted_overlay_is_refused_clearly_where_the_kernel_cannot_encrypt(clean_cluster: Cluster) -> None:
    c = clean_cluster
    name = unique("ov")
    out = c.hosts[0].docker("network", "create", "-d", "overlay", "--opt", "encrypted", name, check=False)
    assert out.returncode != 0 and "IPsec ESP" in out.stderr and "CONFIG_INET_ESP" in out.stderr
    assert all(h.docker("network", "inspect", name, check=False).returncode != 0 for h in c.hosts)


def test_ipv6_overlay_gives_cluster_wide_addresses_aaaa_names_and_traffic_across_hosts(clean_cluster: Cluster) -> None:
    c = clean_cluster
    net = c.overlay("--ipv6", "--subnet", "fd77:1::/64")
    web, client = unique("web"), unique("cl")
    c.hosts[0].docker("run", "-d", "--name", web, "--network", net, "busybox", "sh", "-c",
                      "echo over-ipv6 > /index.html; httpd -f -p 80 -h /")
    c.hosts[1].docker("run", "-d", "--name", client, "--network", net, "busybox", "sleep", "600")
    web_v6 = c.hosts[0].address_of(web, net, "GlobalIPv6Address")
    client_v6 = c.hosts[1].address_of(client, net, "GlobalIPv6Address")
    assert web_v6 != client_v6 and web_v6.startswith("fd77:1::") and client_v6.startswith("fd77:1::")

    def fetch(target: str) -> str:
        return c.hosts[1].docker("exec", client, "sh", "-c",
                                 f"timeout 3 wget -q -O - http://{target}/ 2>&1 || true").stdout

    wait_for(lambda: "over-ipv6" in fetch(f"[{web_v6}]"), "TCP over IPv6 across hosts")
    aaaa = c.hosts[1].docker("exec", client, "nslookup", "-type=AAAA", web).stdout
    assert web_v6 in aaaa
    assert "over-ipv6" in fetch(web)  # and IPv4 still, by name


def test_ipv6_overlays_without_a_subnet_get_distinct_ones_from_the_cluster_pool(clean_cluster: Cluster) -> None:
    c = clean_cluster
    names = [unique("ov") for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda i: c.hosts[i].docker("network", "create", "-d", "overlay", "--ipv6", names[i]), range(3)))
    for name in names:
        wait_for(lambda name=name: c.visible_everywhere(name), "every network on every host")
    subnets = {c.hosts[0].docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
                                 n).stdout.split()[1] for n in names}
    assert len(subnets) == 3 and all(s.startswith("fdc0:ac1e:") and s.endswith("::/64") for s in subnets)
