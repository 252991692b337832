"""Netlink plumbing of the drivers: bridges, veth pairs, macvlan and ipvlan links, addresses, routes.

Every function takes a socket already bound to the right network namespace (the
host's or a container's): a netlink socket stays in the namespace it was opened
in, so the daemon configures a container's interfaces from any thread without
forking. The functions of a container's start and exit (the veth pair, the
container's side) take an `rtnl.Conversation` (`rtnl.conversation(path)`), whose
requests cost a tenth of pyroute2's; the rarer ones (bridges, parents, lookups
for restores) a pyroute2 `IPRoute` (`netns_socket(path)`).

A container's end of a veth pair is created directly inside its namespace
(`net_ns_fd` on the peer) under its final name (eth0, eth1...), so there is no
moment where a half-made interface sits in the host namespace under a
temporary name.

IPv6 addresses (bridge gateways and container ends) are added with NODAD: the
addresses come from IPAM, so duplicate detection has nothing to find, and it
would keep a fresh address unusable ("tentative") for a second or more.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import socket
import struct
from contextlib import contextmanager
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from coracle.netns import netns
from coracle.network.rtnl import LOOPBACK_INDEX, Conversation


@contextmanager
def netns_socket(path: str) -> Iterator[IPRoute]:
    """An IPRoute bound to the network namespace at `path`, closed afterwards."""
    with netns(path):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def random_mac() -> str:
    """A random unicast, locally administered MAC (what Docker does since 28)."""
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def index(ipr: IPRoute, name: str) -> int | None:
    """The interface's index, asked for by name (one request: pyroute2's link_lookup dumps every link)."""
    try:
        return int(ipr.link("get", ifname=name)[0]["index"])
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def kind_of(ipr: IPRoute, name: str) -> str | None:
    """The link kind of an interface (bridge, macvlan, vxlan...): None if there is none or it has no kind."""
    try:
        info = ipr.link("get", ifname=name)[0].get_attr("IFLA_LINKINFO")
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return str(info.get_attr("IFLA_INFO_KIND")) if info is not None else None


def link_up(ipr: IPRoute, name: str) -> None:
    ipr.link("set", index=index(ipr, name), state="up")


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete a link by name; False if it was already gone."""
    idx = index(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        return False
    return True


def free_ifname(conv: Conversation) -> str:
    """eth0, or the next ethN not yet used in the container's namespace."""
    taken = conv.names()
    n = 0
    while f"eth{n}" in taken:
        n += 1
    return f"eth{n}"


def add_veth(conv: Conversation, host_name: str, bridge: str, netns_path: str, peer_name: str, mac: str,
             mtu: int, isolated: bool) -> None:
    """A veth pair: host end up in the bridge (hairpin on, isolated when ICC is off), peer in the netns."""
    bridge_index = conv.existing(bridge)
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        conv.create_veth(host_name, bridge_index, peer_name, fd, mac, mtu)
    finally:
        os.close(fd)
    conv.set_bridge_port(conv.existing(host_name), hairpin=True, isolated=isolated)


def configure_peer(conv: Conversation, ifname: str, address: str, prefixlen: int, gateway: str | None,
                   address6: tuple[str, int] | None = None, gateway6: str | None = None) -> None:
    """Inside the container: addresses on the interface, lo and the interface up, default routes.

    An IPv6 address needs IPv6 enabled on the interface (disable_ipv6=0), which
    the caller sets through sysctl() from inside the container's namespace."""
    conv.set_up(LOOPBACK_INDEX)
    idx = conv.existing(ifname)
    conv.add_address(idx, address, prefixlen)
    if address6:
        conv.add_address(idx, *address6)
    conv.set_up(idx)
    if gateway and not conv.has_default_route():
        conv.add_default_route(idx, gateway)
    if gateway6 and not conv.has_default_route(socket.AF_INET6):
        conv.add_default_route(idx, gateway6, socket.AF_INET6)


def default_route_via(conv: Conversation, ifname: str) -> None:
    """A default route out of the interface itself (no gateway): the host routes for it (ipvlan l3)."""
    idx = conv.index(ifname)
    if idx is not None and not conv.has_default_route():
        conv.add_default_route(idx, None)


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up(netns_path: str) -> None:
    """`lo` up in the namespace at netns_path, by two ioctls on a socket made inside it.

    Why not through pyroute2: an IPRoute costs 5-20 ms to make here (its own
    socket and event loop), for what a `--network none` container needs alone;
    the ioctls take 0.2 ms.
    """
    with netns(netns_path):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a socket belongs to the netns it was made in
    try:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))
    finally:
        sock.close()


def sysctl(path: str, value: str) -> None:
    """Write /proc/sys/<path> (of the calling thread's network namespace)."""
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)
