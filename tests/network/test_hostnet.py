"""The host's routes and addresses as `network create` sees them: read once, then kept in step with the
kernel's notifications (and its silences), in namespaces as bare as a fresh host's."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from coracle.network.hostnet import HostNetwork

# makes network namespaces: the root tier
pytestmark = pytest.mark.root

LAN = (0xC0000200, 0xC00002FF)  # 192.0.2.0/24
FD = 0xFD000050 << 96
FD_50 = (FD, FD | (1 << 80) - 1)  # fd00:50::/48


@pytest.fixture
def bare() -> Iterator[str]:
    name = f"bare-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def host(bare: str) -> Iterator[HostNetwork]:
    mirror = HostNetwork(f"/run/netns/{bare}")
    try:
        yield mirror
    finally:
        mirror.close()


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def _index(ns: str, name: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show", name], check=True, capture_output=True, text=True)
    return int(out.stdout.split(":")[0])


def _inside(host: HostNetwork, subnet: str) -> list[tuple[str, int]]:
    return host.addresses_in(ipaddress.ip_network(subnet))


def test_a_namespace_without_any_route_has_nothing(host: HostNetwork) -> None:
    """A daemon started in a brand-new network namespace (lo down, no route at all) must come up."""
    assert host.route_spans() == [] and host.route_spans(socket.AF_INET6) == []
    assert _inside(host, "0.0.0.0/0") == []


def test_routes_added_and_removed_later_are_seen(bare: str, host: HostNetwork) -> None:
    _ip(bare, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
    _ip(bare, "link", "set", "up0", "up")
    _ip(bare, "link", "set", "up1", "up")
    _ip(bare, "addr", "add", "192.0.2.1/24", "dev", "up0")
    _ip(bare, "route", "add", "default", "via", "192.0.2.254")
    assert host.route_spans() == [LAN]  # read: the address's route, not the default one
    _ip(bare, "route", "add", "10.50.0.0/16", "via", "192.0.2.254")
    _ip(bare, "route", "add", "10.60.0.0/24", "via", "192.0.2.254", "metric", "5")
    _ip(bare, "route", "add", "10.60.0.0/24", "via", "192.0.2.253", "metric", "7")
    _ip(bare, "-6", "route", "add", "fd00:50::/48", "dev", "up0")
    _ip(bare, "route", "add", "10.70.0.0/16", "dev", "up0", "table", "100")  # another table: not counted
    ten_60 = (0x0A3C0000, 0x0A3C00FF)
    assert sorted(host.route_spans()) == [(0x0A320000, 0x0A32FFFF), ten_60, ten_60, LAN]
    assert FD_50 in host.route_spans(socket.AF_INET6)
    _ip(bare, "route", "del", "10.50.0.0/16")
    _ip(bare, "route", "del", "10.60.0.0/24", "metric", "5")
    _ip(bare, "addr", "add", "198.51.100.1/24", "dev", "up1")
    _ip(bare, "route", "add", "10.80.0.0/16", "via", "198.51.100.2")
    _ip(bare, "addr", "del", "198.51.100.1/24", "dev", "up1")  # the kernel drops the route through it, silently
    assert sorted(host.route_spans()) == [ten_60, LAN]
    _ip(bare, "link", "set", "up0", "down")  # the kernel drops its IPv4 routes, silently
    assert host.route_spans() == []
    _ip(bare, "link", "set", "up0", "up")  # the address's route comes back, announced
    assert host.route_spans() == [LAN]
    _ip(bare, "link", "del", "up0")  # all its routes go with it, silently
    assert host.route_spans() == []
    assert FD_50 not in host.route_spans(socket.AF_INET6)


def test_addresses_inside_a_subnet_follow_the_links(bare: str, host: HostNetwork) -> None:
    _ip(bare, "link", "add", "brs", "type", "bridge")
    _ip(bare, "link", "add", "brt", "type", "bridge")
    _ip(bare, "addr", "add", "10.9.0.1/24", "dev", "brt")
    assert _inside(host, "10.9.0.0/16") == [("10.9.0.1", _index(bare, "brt"))]  # read
    _ip(bare, "addr", "add", "10.8.0.1/24", "dev", "brs")
    _ip(bare, "addr", "add", "10.8.0.77/32", "dev", "brs")
    _ip(bare, "addr", "add", "fd00:8::1/64", "dev", "brs")
    brs = _index(bare, "brs")
    assert _inside(host, "10.8.0.0/24") == [("10.8.0.1", brs), ("10.8.0.77", brs)]
    assert _inside(host, "10.8.0.64/26") == [("10.8.0.77", brs)]
    assert _inside(host, "10.7.0.0/16") == []
    assert _inside(host, "10.9.0.1/32") == [("10.9.0.1", _index(bare, "brt"))]
    assert _inside(host, "fd00:8::/48") == [("fd00:8::1", brs)]
    _ip(bare, "addr", "del", "10.8.0.77/32", "dev", "brs")
    assert _inside(host, "10.8.0.0/24") == [("10.8.0.1", brs)]
    _ip(bare, "link", "del", "brs")  # as `network rm` deletes a bridge
    assert _inside(host, "10.8.0.0/16") == [] and _inside(host, "fd00:8::/48") == []
