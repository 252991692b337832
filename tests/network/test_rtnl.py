"""The rtnetlink conversation of the start path, against the kernel: a veth into a bridge in one
request, the container's side configured, packets flowing, and the kernel's errors said as errno."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from coracle.network import netlink, rtnl

MAC = "02:42:0a:09:00:02"


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True, errors="replace").stdout


@pytest.fixture
def inside(netns: str, unique: Callable[[str], str]) -> Iterator[str]:
    """A container's namespace beside the host `netns`, which has a bridge `brt` at 10.9.0.1/24."""
    name = unique("ci")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        _ip(netns, "link", "add", "brt", "type", "bridge")
        _ip(netns, "addr", "add", "10.9.0.1/24", "dev", "brt")
        _ip(netns, "link", "set", "brt", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_veth_joins_the_bridge_and_the_container_reaches_its_gateway(netns: str, inside: str) -> None:
    with rtnl.conversation(f"/run/netns/{netns}") as host:
        netlink.add_veth(host, "vtest", "brt", f"/run/netns/{inside}", "eth0", MAC, 1400, isolated=True)
        details = _ip(netns, "-d", "link", "show", "vtest")
        assert "master brt" in details and "mtu 1400" in details and ",UP" in details
        assert "hairpin on" in details and "isolated on" in details
        with pytest.raises(OSError) as refused:  # the kernel's own reason, as an errno
            netlink.add_veth(host, "vtest", "brt", f"/run/netns/{inside}", "eth1", MAC, 1400, isolated=False)
        assert refused.value.errno == errno.EEXIST
        with rtnl.conversation(f"/run/netns/{inside}") as container:
            assert container.names() == {"lo", "eth0"}
            assert netlink.free_ifname(container) == "eth1"
            assert container.index("eth9") is None
            assert container.mac_of("eth0") == MAC
            netlink.configure_peer(container, "eth0", "10.9.0.2", 24, "10.9.0.1")
        assert "default via 10.9.0.1 dev eth0" in _ip(inside, "route")
        assert "inet 10.9.0.2/24" in _ip(inside, "addr", "show", "eth0")
        ping = subprocess.run(["ip", "netns", "exec", inside, "busybox", "ping", "-c", "1", "-W", "2", "10.9.0.1"],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert host.delete("vtest") is True
        assert host.delete("vtest") is False  # already gone: not an error
    assert "eth0" not in _ip(inside, "link")  # the peer went with it


def test_the_conversation_stays_in_the_namespace_it_was_opened_in(netns: str, inside: str) -> None:
    own = os.stat("/proc/thread-self/ns/net").st_ino
    with rtnl.conversation(f"/run/netns/{inside}") as container:
        assert os.stat("/proc/thread-self/ns/net").st_ino == own  # the thread is back home
        assert container.names() == {"lo"}  # while its socket still speaks to the container's namespace


def test_interface_names_a_container_chose_in_any_bytes_do_not_stop_a_join(netns: str, inside: str) -> None:
    # A container with NET_ADMIN names its interfaces as it likes, and not necessarily in UTF-8.
    subprocess.run(["ip", "-n", inside, "link", "add", "name", b"\xff\xfeA".decode(errors="surrogateescape"),
                    "type", "veth", "peer", "name", "eth0"], check=True)
    with rtnl.conversation(f"/run/netns/{inside}") as container:
        assert netlink.free_ifname(container) == "eth1"
    with rtnl.conversation(f"/run/netns/{netns}") as host:
        netlink.add_veth(host, "vtest", "brt", f"/run/netns/{inside}", "eth1", MAC, 1500, isolated=False)
    assert "eth1@" in _ip(inside, "link")


def test_one_dump_names_every_bridges_ports(netns: str, inside: str) -> None:
    # What the daemon's start asks for (stray veths of every bridge): one dump, whatever the number of bridges.
    _ip(netns, "link", "add", "brs", "type", "bridge")
    for port, bridge in (("pa", "brt"), ("pb", "brt"), ("pc", "brs")):
        _ip(netns, "link", "add", port, "type", "veth", "peer", "name", f"{port}-x")
        _ip(netns, "link", "set", port, "master", bridge)
    with rtnl.conversation(f"/run/netns/{netns}") as host:
        ports = host.ports()
        assert sorted(ports["brt"]) == ["pa", "pb"] and ports["brs"] == ["pc"]
        assert "pa-x" not in {p for names in ports.values() for p in names}  # no master: no bridge's port
