"""Overlay networks when parts fail (a host dies, a daemon restarts, etcd members or all of etcd go
away) and with etcd over TLS.

Each test builds its own cluster (3 hosts; a 3-member etcd where members are
killed) with a short membership lease (4 s) and removes it afterwards.
"""

from __future__ import annotations

import time

import pytest

from cluster import Cluster, Host, cluster, sh, wait_for
from harness import unique

from coracle.network.drivers.overlay import device_names

# namespaces as hosts, etcd and daemons: the root tier
pytestmark = pytest.mark.root


def resolves(host: Host, client: str, name: str) -> bool:
    out = host.docker("exec", client, "nslookup", name, check=False)
    return out.returncode == 0 and "Address" in out.stdout.split("127.0.0.11:53", 1)[-1]


def fetch(host: Host, client: str, target: str) -> str:
    return host.docker("exec", client, "sh", "-c", f"timeout 3 wget -q -O - http://{target}/ 2>&1 || true").stdout


def web(host: Host, net: str, word: str) -> str:
    name = unique("web")
    host.docker("run", "-d", "--name", name, "--network", net, "busybox", "sh", "-c",
                f"echo {word} > /index.html; httpd -f -p 80 -h /")
    return name


def sleeper(host: Host, net: str) -> str:
    name = unique("cl")
    host.docker("run", "-d", "--name", name, "--network", net, "busybox", "sleep", "600")
    return name


def remove_all(c: Cluster) -> None:
    for host in c.hosts:
        ids = host.docker("ps", "-aq").stdout.split()
        if ids:
            host.docker("rm", "-f", *ids)
    for net in c.hosts[0].docker("network", "ls", "--filter", "driver=overlay", "-q").stdout.split():
        c.hosts[0].docker("network", "rm", net)
    wait_for(lambda: not c.clean(), "nothing left of the overlay anywhere")


def test_a_dead_hosts_endpoints_go_when_its_lease_expires() -> None:
    with cluster() as c:
        net = c.overlay()
        h0, h1, h2 = c.hosts
        doomed = web(h2, net, "from-h2")
        doomed_ip = h2.address_of(doomed, net)
        client = sleeper(h0, net)
        wait_for(lambda: "from-h2" in fetch(h0, client, doomed), "the doomed container reachable by name")
        c.kill_host(h2)  # daemon, monitor and containers at once: nobody says goodbye
        # within the lease's TTL (4 s here) etcd drops h2's keys and the others forget it
        wait_for(lambda: not resolves(h0, client, doomed), "the dead host's name gone")
        wait_for(lambda: all(n.get("dst") != doomed_ip for h in (h0, h1) for n in h.permanent_neighbours()),
                 "the dead host's neighbour entries gone")
        assert not any(h2.ip in line for h in (h0, h1) for line in h.remote_fdb())
        assert not [k for k in c.etcd.listing() if k.endswith("/" + doomed_ip)]  # its address claim too
        remove_all(c)


def test_daemon_restart_keeps_containers_and_their_entries() -> None:
    with cluster() as c:
        net = c.overlay()
        h0, h1, _ = c.hosts
        server = web(h1, net, "still-here")
        client = sleeper(h0, net)
        wait_for(lambda: "still-here" in fetch(h0, client, server), "the server reachable by name")
        pid = h1.pid_of(server)
        h1.daemon.stop()
        assert "still-here" in fetch(h0, client, server)  # the data plane is the kernel's: no daemon needed
        h1.daemon.start()
        assert h1.pid_of(server) == pid  # live restore: the same process
        wait_for(lambda: "still-here" in fetch(h0, client, server), "the server reachable by name after restart")
        check = h1.cli("system", "check", "--dry-run").stdout
        assert "No inconsistencies found" in check, check
        remove_all(c)


def earlier_layout(host: Host, net: str, container: str) -> None:
    """Turn a host's copy of an overlay, with one running container, into what an earlier coracle made:
    a bridge holding the gateway address with the VXLAN device as a port, and a veth pair for the
    container (its end named eth0, with its MAC, address and default route)."""
    gateway, vx = device_names(host.docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip())
    subnet, via = host.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
                              net).stdout.split()
    ip, mac = host.address_of(container, net), host.address_of(container, net, "MacAddress")
    prefix, ns = subnet.split("/")[1], f"/proc/{host.pid_of(container)}/ns/net"
    here, inside = ("ip", "-n", host.daemon.netns), ("nsenter", f"--net={ns}", "ip")
    remote = [line.split()[0] for line in host.remote_fdb()]
    sh(*here, "link", "del", gateway)
    sh(*inside, "link", "del", "eth0")
    sh(*here, "link", "add", gateway, "mtu", "1450", "type", "bridge")
    sh(*here, "addr", "add", f"{via}/{prefix}", "dev", gateway)
    sh(*here, "link", "set", vx, "master", gateway)
    sh(*here, "link", "set", "dev", vx, "type", "bridge_slave", "learning", "off", "flood", "off")
    for remote_mac in remote:
        sh("bridge", "-n", host.daemon.netns, "fdb", "replace", remote_mac, "dev", vx, "master", "static")
    sh(*here, "link", "set", gateway, "up")
    sh(*here, "link", "add", "vethold", "mtu", "1450", "master", gateway, "type", "veth", "peer", "name", "eth0",
       "address", mac, "mtu", "1450", "netns", ns)
    sh(*here, "link", "set", "vethold", "up")
    sh(*inside, "addr", "add", f"{ip}/{prefix}", "dev", "eth0")
    sh(*inside, "link", "set", "eth0", "up")
    sh(*inside, "route", "add", "default", "via", via)


def test_a_daemon_restart_moves_an_earlier_bridge_layout_to_macvlan_links_with_its_container_running() -> None:
    with cluster(hosts=2) as c:
        net = c.overlay()
        h0, h1 = c.hosts
        server = web(h1, net, "across")
        client = web(h0, net, "back")
        wait_for(lambda: "across" in fetch(h0, client, server), "the server reachable by name")
        earlier_layout(h0, net, client)
        wait_for(lambda: "across" in fetch(h0, client, server), "the earlier layout carrying traffic")
        pid = h0.pid_of(client)
        h0.daemon.stop()
        h0.daemon.start()
        assert h0.pid_of(client) == pid  # live restore: the same process, its link made anew
        wait_for(lambda: "across" in fetch(h0, client, server), "the server reachable after the restart")
        assert "back" in fetch(h1, server, client)
        late = web(h0, net, "late")  # a new container joins the network as it is now
        wait_for(lambda: "late" in fetch(h1, server, late), "a container started after the restart reachable")
        links = {link["ifname"]: link.get("linkinfo", {}).get("info_kind") for link in h0.ip_json("-d", "link")}
        assert "vethold" not in links and [k for name, k in links.items() if name.startswith("ov-")] == ["macvlan"]
        eth0 = h0.docker("exec", client, "cat", "/sys/class/net/eth0/address").stdout.strip()
        assert eth0 == h0.address_of(client, net, "MacAddress")
        check = h0.cli("system", "check", "--dry-run").stdout
        assert "No inconsistencies found" in check, check
        remove_all(c)


def test_a_lost_lease_is_replaced_and_the_hosts_entries_published_again() -> None:
    with cluster(hosts=2) as c:
        net = c.overlay()
        h0, h1 = c.hosts
        server = web(h1, net, "published-again")
        client = sleeper(h0, net)
        wait_for(lambda: "published-again" in fetch(h0, client, server), "the server reachable by name")
        node = f"/coracle/nodes/{h1.ip}"
        old = c.etcd.lease_of(node)
        assert old is not None
        c.etcd.revoke(old)  # as if h1 had been cut off longer than the TTL: all its keys vanish
        # h1 notices at its next keepalive, takes a new lease and publishes its endpoints again
        wait_for(lambda: c.etcd.lease_of(node) not in (None, old), "h1 back in the membership on a new lease")
        server_ip = h1.address_of(server, net)
        wait_for(lambda: any(k.endswith("/" + server_ip) for k in c.etcd.listing("/coracle/addresses/")),
                 "the server's address claimed again")
        wait_for(lambda: "published-again" in fetch(h0, client, server), "the server reachable by name again")
        late = web(h1, net, "on-the-new-lease")
        wait_for(lambda: "on-the-new-lease" in fetch(h0, client, late), "a container started on the new lease")
        remove_all(c)


def test_a_host_cut_off_longer_than_the_ttl_has_what_it_missed_once_it_is_back() -> None:
    with cluster(hosts=2) as c:
        net = c.overlay("--subnet", "10.81.0.0/24")
        h0, h1 = c.hosts
        client = unique("cl")  # away from the first free address, which h0 may hand out meanwhile
        h1.docker("run", "-d", "--name", client, "--network", net, "--ip", "10.81.0.50", "busybox", "sleep", "600")
        node = f"/coracle/nodes/{h1.ip}"
        old = c.etcd.lease_of(node)
        with c.cut_off(h1):
            missed = web(h0, net, "made-while-cut-off")  # h1's watch cannot see it
            missed_ip = h0.address_of(missed, net)
        wait_for(lambda: c.etcd.lease_of(node) not in (None, old), "h1 back on a new lease")
        # h1 announces itself only once it has re-read the cluster: no waiting for its watch to reconnect
        assert any(n.get("dst") == missed_ip for n in h1.permanent_neighbours())
        assert resolves(h1, client, missed)
        wait_for(lambda: "made-while-cut-off" in fetch(h1, client, missed), "the missed server reachable (once up)")
        wait_for(lambda: resolves(h0, missed, client), "h1's container published again and known on h0")
        remove_all(c)


def test_a_host_back_from_a_long_cut_off_does_not_take_back_an_address_given_away_meanwhile() -> None:
    with cluster(hosts=2) as c:
        net = c.overlay("--subnet", "10.82.0.0/24")
        h0, h1 = c.hosts
        early = sleeper(h1, net)
        address = h1.address_of(early, net)
        with c.cut_off(h1):  # h1's address claims expire with its lease: h0 may hand the address out again
            late = web(h0, net, "given-again")
            assert h0.address_of(late, net) == address
        node = f"/coracle/nodes/{h1.ip}"
        wait_for(lambda: c.etcd.lease_of(node) is not None, "h1 back on a new lease")
        claim = f"/coracle/addresses/{h0.docker('network', 'inspect', '-f', '{{.Id}}', net).stdout.strip()}/{address}"
        assert c.etcd.lease_of(claim) == c.etcd.lease_of(f"/coracle/nodes/{h0.ip}")  # still the new container's
        observer = sleeper(h0, net)
        assert not resolves(h0, observer, early)  # the stale one is not published: one container per address
        wait_for(lambda: "given-again" in fetch(h0, observer, address), "the address reaching the new container")
        h1.docker("rm", "-f", early)  # and removing the stale one releases nothing of the new one's
        assert c.etcd.lease_of(claim) == c.etcd.lease_of(f"/coracle/nodes/{h0.ip}")
        remove_all(c)


def test_a_host_whose_watch_missed_changes_etcd_has_compacted_away_still_learns_them() -> None:
    with cluster(hosts=2, ttl=60) as c:  # a lease that outlives the freeze: only the watch can bring h1 up to date
        kept = c.overlay("--subnet", "10.83.0.0/24")
        doomed = c.overlay()
        h0, h1 = c.hosts
        client = sleeper(h1, kept)
        node = f"/coracle/nodes/{h1.ip}"
        lease = c.etcd.lease_of(node)
        added = unique("ov")
        with c.watch_lost(h1):
            late = web(h0, kept, "made-while-away")
            late_ip = h0.address_of(late, kept)
            h0.docker("network", "create", "-d", "overlay", added)
            h0.docker("network", "rm", doomed)
            c.etcd.compact()  # etcd's history of those changes is gone: a watch from before them is refused
        wait_for(lambda: h1.docker("network", "inspect", added, check=False).returncode == 0,
                 "the network made meanwhile known on h1")
        wait_for(lambda: h1.docker("network", "inspect", doomed, check=False).returncode != 0,
                 "the network removed meanwhile gone from h1")
        wait_for(lambda: "made-while-away" in fetch(h1, client, late), "the container made meanwhile reachable by name")
        assert any(n.get("dst") == late_ip for n in h1.permanent_neighbours())
        assert c.etcd.lease_of(node) == lease  # h1 kept its lease: no new-lease listing did the work
        remove_all(c)


def test_hosts_follow_changes_after_etcd_compacts_the_history_of_a_quiet_spell() -> None:
    with cluster(hosts=2) as c:
        c.overlay()
        for value in ("one", "two"):  # another user of the same store: its revision moves on past our last change
            c.etcd.put("/elsewhere/key", value)
        c.etcd.compact()  # as auto-compaction would: a watch from just after our last change is refused now
        time.sleep(7)  # quiet: every host's watch idles out (after 5 s) and watches again from its last change
        late = c.overlay(on=0)  # waits until h1 has it too
        assert c.hosts[1].docker("network", "inspect", late).returncode == 0
        remove_all(c)


def test_one_etcd_member_down_is_no_outage() -> None:
    with cluster(etcd_members=3) as c:
        net = c.overlay()
        c.etcd.kill(0)  # the first member every daemon was told about
        h0, h1, h2 = c.hosts
        server = web(h2, net, "quorum-ok")
        client = sleeper(h0, net)
        wait_for(lambda: "quorum-ok" in fetch(h0, client, server), "a new container reachable by name")
        second = c.overlay(on=1)  # and networks can still be made
        assert h2.docker("network", "inspect", second).returncode == 0
        remove_all(c)


def test_etcd_down_keeps_traffic_refuses_new_containers_clearly_then_reconciles() -> None:
    with cluster(etcd_members=3) as c:
        net = c.overlay()
        h0, h1, h2 = c.hosts
        server = web(h1, net, "kernel-path")
        client = sleeper(h0, net)
        leaving = sleeper(h2, net)
        leaving_ip = h2.address_of(leaving, net)
        wait_for(lambda: "kernel-path" in fetch(h0, client, server), "the server reachable by name")
        server_ip = h1.address_of(server, net)
        c.etcd.kill()
        assert "kernel-path" in fetch(h0, client, server_ip)  # running traffic keeps flowing
        refused = h2.docker("run", "-d", "--network", net, "busybox", "sleep", "600", check=False, timeout=60)
        assert refused.returncode != 0 and "cluster store unreachable" in refused.stderr
        h2.docker("rm", "-f", leaving)  # gone while etcd is away: its entry is removed when etcd is back
        time.sleep(1)
        c.etcd.start()
        wait_for(lambda: not [k for k in c.etcd.listing() if k.endswith("/" + leaving_ip)],
                 "the address of the container removed during the outage released")
        wait_for(lambda: "kernel-path" in fetch(h0, client, server), "name resolution after reconciliation")
        late = web(h2, net, "after-outage")
        wait_for(lambda: "after-outage" in fetch(h0, client, late), "a container made after the outage")
        remove_all(c)


def test_etcd_over_tls_with_client_certificates() -> None:
    with cluster(hosts=2, tls=True) as c:
        net = c.overlay()
        h0, h1 = c.hosts
        server = web(h1, net, "over-tls")
        client = sleeper(h0, net)
        wait_for(lambda: "over-tls" in fetch(h0, client, server), "cross-host traffic with the store on TLS")
        remove_all(c)
