"""The four network modes and user networks through a real daemon, proven with traffic.

World: the daemon's netns is the "host"; an "outside" netns joined to it by a
veth pair is a machine on its LAN (192.0.2.0/24). Servers are busybox tools
run inside those namespaces; every address belongs to namespaces made here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import docker
import pytest

from harness import Daemon, unique

HOST_IP, OUT_IP = "192.0.2.1", "192.0.2.2"


@pytest.fixture(scope="module")
def lan(daemon: Daemon) -> Iterator[str]:
    """An 'outside' namespace on the host's uplink; the host routes through it."""
    outside = unique("out")
    up, peer = unique("up"), unique("lp")
    cmds = [
        ["ip", "netns", "add", outside],
        ["ip", "link", "add", up, "netns", daemon.netns, "type", "veth", "peer", "name", peer, "netns", outside],
        ["ip", "-n", daemon.netns, "addr", "add", f"{HOST_IP}/24", "dev", up],
        ["ip", "-n", outside, "addr", "add", f"{OUT_IP}/24", "dev", peer],
        ["ip", "-n", daemon.netns, "link", "set", up, "up"],
        ["ip", "-n", outside, "link", "set", peer, "up"],
        ["ip", "-n", outside, "link", "set", "lo", "up"],
        ["ip", "-n", daemon.netns, "route", "replace", "default", "via", OUT_IP],
    ]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        yield outside
    finally:
        subprocess.run(["ip", "netns", "del", outside], capture_output=True)


@pytest.fixture
def client(daemon: Daemon) -> Iterator[docker.DockerClient]:
    c = daemon.sdk()
    yield c
    for ctr in c.containers.list(all=True):
        ctr.remove(force=True)
    for net in c.networks.list():
        if net.name not in ("bridge", "host", "none"):
            net.remove()
    c.close()


PEER_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
while True:
    c, addr = s.accept()
    c.sendall(f"{sys.argv[2]} peer={addr[0]}\\n".encode()); c.close()
"""


def serve(ns: str, port: int, reply: str) -> subprocess.Popen:
    """A TCP server in a namespace that answers with a word and the client's address as it sees it."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PEER_SERVER, str(port), reply])
    time.sleep(0.3)
    return proc


def test_bridge_container_reaches_the_lan_masqueraded(client: docker.DockerClient, lan: str) -> None:
    server = serve(lan, 7001, "hello-from-lan")
    try:
        script = f"ip -o -4 addr show eth0; ip route; nc {OUT_IP} 7001 </dev/null"
        out = client.containers.run("busybox", ["sh", "-c", script], remove=True).decode()
    finally:
        server.kill()
    assert "hello-from-lan" in out
    assert f"peer={HOST_IP}" in out  # the LAN saw the host's address: masqueraded
    assert "default via" in out


def test_published_port_from_the_lan_and_localhost(client: docker.DockerClient, daemon: Daemon, lan: str) -> None:
    ctr = client.containers.run("busybox", ["sh", "-c", "echo published-ok > /index.html; httpd -f -p 80 -h /"],
                                detach=True, ports={"80/tcp": 18080})
    time.sleep(0.3)
    remote = subprocess.run(["ip", "netns", "exec", lan, "busybox", "wget", "-q", "-O", "-",
                             f"http://{HOST_IP}:18080/"], capture_output=True, text=True, timeout=10)
    local = daemon.netns_exec("busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18080/", check=False)
    assert remote.stdout.strip() == "published-ok"
    assert local.stdout.strip() == "published-ok"
    ctr.reload()
    assert (ctr.ports["80/tcp"] or [{}])[0].get("HostPort") == "18080"


def test_port_conflict_is_refused_and_leaves_nothing(client: docker.DockerClient, daemon: Daemon) -> None:
    import docker

    client.containers.run("busybox", "sleep 60", detach=True, ports={"80/tcp": 18081})
    links_before = daemon.netns_exec("ip", "-o", "link").stdout.count("veth")
    second = client.containers.create("busybox", "sleep 60", ports={"80/tcp": 18081})
    with pytest.raises(docker.errors.APIError) as err:
        second.start()
    assert "already allocated" in str(err.value) or "in use" in str(err.value)
    assert daemon.netns_exec("ip", "-o", "link").stdout.count("veth") == links_before


def test_none_mode_has_only_loopback_and_no_route(client: docker.DockerClient) -> None:
    script = "ip -o link | wc -l; ip route | wc -l; ping -c1 -W1 127.0.0.1 >/dev/null && echo lo-ok"
    out = client.containers.run("busybox", ["sh", "-c", script], network_mode="none", remove=True).decode().split()
    assert out == ["1", "0", "lo-ok"]


def test_container_mode_shares_ip_and_loopback(client: docker.DockerClient) -> None:
    web = client.containers.run("busybox", ["sh", "-c", "echo shared > /index.html; httpd -f -p 127.0.0.1:8000 -h /"],
                                detach=True)
    time.sleep(0.2)
    out = client.containers.run("busybox", ["sh", "-c", "ip -o -4 addr show eth0 | awk '{print $4}'; wget -q -O - http://127.0.0.1:8000/"],
                                network_mode=f"container:{web.id}", remove=True).decode().split()
    web.reload()
    assert out[0].split("/")[0] == web.attrs["NetworkSettings"]["IPAddress"]
    assert out[1] == "shared"


def test_user_network_resolves_names_and_isolates(client: docker.DockerClient) -> None:
    net_a = client.networks.create(unique("na"), driver="bridge")
    net_b = client.networks.create(unique("nb"), driver="bridge")
    db = client.containers.run("busybox", ["sh", "-c", "echo db-here > /index.html; httpd -f -p 80 -h /"],
                               detach=True, name=unique("db"), network=net_a.name)
    time.sleep(0.2)
    db.reload()
    ip_a = db.attrs["NetworkSettings"]["Networks"][net_a.name]["IPAddress"]
    out = client.containers.run("busybox", ["sh", "-c", f"wget -q -O - http://{db.name}/; cat /etc/resolv.conf"],
                                network=net_a.name, remove=True).decode()
    assert "db-here" in out and "nameserver 127.0.0.11" in out
    isolated = client.containers.run("busybox", ["sh", "-c", f"wget -q -T 2 -O - http://{ip_a}/ || echo unreachable"],
                                     network=net_b.name, remove=True).decode()
    assert "unreachable" in isolated and "db-here" not in isolated


def test_a_renamed_container_is_found_by_its_new_name(client: docker.DockerClient) -> None:
    net = client.networks.create(unique("nr"), driver="bridge")
    db = client.containers.run("busybox", ["sleep", "60"], detach=True, name=unique("old"), network=net.name)
    new = unique("new")
    db.rename(new)
    db.reload()
    settings = db.attrs["NetworkSettings"]["Networks"][net.name]
    assert settings["DNSNames"][0] == new
    out = client.containers.run("busybox", ["nslookup", new], network=net.name, remove=True).decode()
    assert settings["IPAddress"] in out.split("Name:", 1)[1]
    db.remove(force=True)


def test_no_leaks_after_rm(client: docker.DockerClient, daemon: Daemon) -> None:
    def count() -> tuple[int, int]:
        links = daemon.netns_exec("ip", "-o", "link").stdout.count("veth")
        rules = daemon.netns_exec("nft", "list", "ruleset").stdout.count("elements")
        return links, rules

    before = count()
    ctrs = [client.containers.run("busybox", "sleep 60", detach=True, ports={"80/tcp": None}) for _ in range(3)]
    assert count()[0] == before[0] + 3
    for c in ctrs:
        c.remove(force=True)
    assert count() == before


# ----- IPv6 user networks --------------------------------------------------------

HOST6, OUT6 = "2001:db8:52::1", "2001:db8:52::2"

PEER6_SERVER = PEER_SERVER.replace("socket.socket()", "socket.socket(socket.AF_INET6)").replace('"0.0.0.0"', '"::"')


@pytest.fixture(scope="module")
def lan6(daemon: Daemon, lan: str) -> Iterator[str]:
    """The same LAN with IPv6 (documentation addresses) and the host's IPv6 default route through it."""
    import json

    def link_with(ns: str, address: str) -> str:
        out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr"], check=True, capture_output=True, text=True)
        return next(i["ifname"] for i in json.loads(out.stdout) if any(a["local"] == address for a in i["addr_info"]))

    up, peer = link_with(daemon.netns, HOST_IP), link_with(lan, OUT_IP)
    subprocess.run(["ip", "-n", daemon.netns, "addr", "add", f"{HOST6}/64", "dev", up, "nodad"], check=True)
    subprocess.run(["ip", "-n", lan, "addr", "add", f"{OUT6}/64", "dev", peer, "nodad"], check=True)
    subprocess.run(["ip", "-n", daemon.netns, "-6", "route", "replace", "default", "via", OUT6], check=True)
    try:
        yield lan
    finally:
        subprocess.run(["ip", "-n", daemon.netns, "-6", "route", "del", "default", "via", OUT6], capture_output=True)
        subprocess.run(["ip", "-n", daemon.netns, "addr", "del", f"{HOST6}/64", "dev", up], capture_output=True)


def test_ipv6_network_names_nat66_published_port_and_no_leaks(client: docker.DockerClient, daemon: Daemon,
                                                              lan6: str) -> None:
    import docker

    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="2001:db8:77::/64")])
    net = client.networks.create(unique("n6"), driver="bridge", enable_ipv6=True, ipam=ipam)
    assert [c["Subnet"] for c in net.attrs["IPAM"]["Config"]][1] == "2001:db8:77::/64"
    db = client.containers.run("busybox", ["sh", "-c", "echo db6-here > /index.html; httpd -f -p 80 -h /"],
                               detach=True, name=unique("db"), network=net.name, ports={"80/tcp": 18090})
    time.sleep(0.3)
    db.reload()
    ep = db.attrs["NetworkSettings"]["Networks"][net.name]
    assert (ep["GlobalIPv6Address"], ep["GlobalIPv6PrefixLen"], ep["IPv6Gateway"]) == ("2001:db8:77::2", 64,
                                                                                       "2001:db8:77::1")
    # container to container by name (AAAA), then over IPv6; and out to the LAN through NAT66
    server = subprocess.Popen(["ip", "netns", "exec", lan6, sys.executable, "-c", PEER6_SERVER, "7006", "lan6"])
    time.sleep(0.3)
    try:
        out = client.containers.run("busybox", ["sh", "-c", f"nslookup -type=AAAA {db.name}; ip -6 route; "
                                                f"wget -q -O - 'http://[2001:db8:77::2]/'; nc {OUT6} 7006 </dev/null"],
                                    network=net.name, remove=True).decode()
    finally:
        server.kill()
    assert "2001:db8:77::2" in out and "default via 2001:db8:77::1" in out
    assert "db6-here" in out
    assert f"lan6 peer={HOST6}" in out  # the LAN saw the host's address: NAT66
    # the published port over IPv6 from the LAN, with Docker's two Ports entries
    assert db.attrs["NetworkSettings"]["Ports"]["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": "18090"},
                                                              {"HostIp": "::", "HostPort": "18090"}]
    remote = subprocess.run(["ip", "netns", "exec", lan6, "busybox", "wget", "-q", "-O", "-",
                             f"http://[{HOST6}]:18090/"], capture_output=True, text=True, timeout=10)
    assert remote.stdout.strip() == "db6-here"
    # nothing of IPv6 is left after rm: no nft element, no address on the network
    db.remove(force=True)
    for name in ("any_addr", "any_port"):
        assert "elements" not in daemon.netns_exec("nft", "list", "map", "ip6", "coracle", name).stdout
    assert client.networks.get(net.id or "").attrs["Containers"] == {}
