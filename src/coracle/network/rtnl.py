"""A synchronous rtnetlink conversation: the requests a container's start and exit make.

Why not pyroute2 here: each of its requests runs its own event loop, 0.4-0.7 ms of
Python per request here and 1.3 ms per socket, and joining a container to a bridge
took ~14 of them: 17 ms of every bridge start, for what the kernel does in
microseconds. The same requests, packed with `struct` and sent on a plain netlink
socket, take ~0.05 ms each, and so do a bridge's address and link-up, which the daemon's start
makes for every network (pyroute2 took ~2 ms a bridge: a second at 500 networks).
pyroute2 stays for everything else (making bridges, VXLAN forwarding entries,
macvlan and ipvlan parents), where requests are rare and its breadth is worth more
than its cost.

Its message layouts are shared with hostnet.py, which mirrors the host's routes and
addresses from the kernel's notifications. A socket belongs to the network namespace it was made in, so a `Conversation`
opened inside a container's namespace configures it from any thread (see `conversation`).
Errors come back as `OSError` with the kernel's errno.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from coracle.netns import netns
from coracle.network.nlmsg import F_CREATE, F_EXCL, Socket, attr, attributes, nested, string

# linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/if_bridge.h
IFINFO = struct.Struct("=BxHiII")         # ifinfomsg: family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")          # ifaddrmsg: family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")       # rtmsg: family, dst/src len, tos, table, protocol, scope, type, flags
RTM_NEWLINK, RTM_DELLINK, _RTM_GETLINK, _RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 20, 21, 22, 24, 25, 26
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINK, _IFLA_MASTER = 1, 3, 4, 5, 10
_IFLA_PROTINFO, _IFLA_LINKINFO, _IFLA_NET_NS_FD, _IFLA_LINK_NETNSID = 12, 18, 28, 37
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_IFLA_BRPORT_MODE, _IFLA_BRPORT_ISOLATED = 4, 33
IFA_ADDRESS, IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_IFA_F_NODAD = 0x02  # an address without duplicate detection
RTA_OIF, _RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RT_SCOPE_LINK, _RTN_UNICAST = 254, 3, 0, 253, 1
IFF_UP = 0x1
_AF_BRIDGE = 7
LOOPBACK_INDEX = 1  # the kernel makes `lo` first in every network namespace


class Conversation(Socket):
    """One rtnetlink socket, in the namespace that was current when it was made."""

    def __init__(self) -> None:
        super().__init__(socket.NETLINK_ROUTE)

    # ----- links --------------------------------------------------------------------

    def _link(self, name: str) -> bytes:
        """The kernel's description of the interface `name` (OSError ENODEV if there is none)."""
        request = IFINFO.pack(0, 0, 0, 0, 0) + attr(_IFLA_IFNAME, string(name))
        for _, body in self._replies(self._send(_RTM_GETLINK, 0, request)):
            return body  # the generator is left before the kernel's next message: there is none
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    def existing(self, name: str) -> int:
        """The index of an interface that must exist (OSError ENODEV, naming it, otherwise)."""
        try:
            return int(IFINFO.unpack_from(self._link(name))[2])
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise OSError(errno.ENODEV, f"no interface {name}") from None
            raise

    def index(self, name: str) -> int | None:
        """The index of the interface `name`, None if there is none."""
        try:
            return self.existing(name)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise

    def names(self) -> set[str]:
        """The names of every interface of the namespace (a container with NET_ADMIN names its own
        as it likes, in any bytes: they are read, never trusted to be UTF-8)."""
        found = set()
        for body in self.dump(_RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0)):
            name = attributes(body, IFINFO.size).get(_IFLA_IFNAME, b"")
            found.add(name.rstrip(b"\0").decode(errors="surrogateescape"))
        return found

    def ports(self) -> dict[str, list[str]]:
        """The names of the ports of every bridge (or other master device) of the namespace, by the
        master's name: one dump for all of them. A dump per bridge, decoded by pyroute2, made the
        daemon's start quadratic in networks (minutes at 500)."""
        names: dict[int, str] = {}
        masters: list[tuple[str, int]] = []
        for body in self.dump(_RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0)):
            attrs = attributes(body, IFINFO.size)
            name = attrs.get(_IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="surrogateescape")
            names[int(IFINFO.unpack_from(body)[2])] = name
            master = attrs.get(_IFLA_MASTER)
            if master and len(master) >= 4:
                masters.append((name, struct.unpack_from("=I", master)[0]))
        found: dict[str, list[str]] = {}
        for name, master_index in masters:
            if master_index in names:
                found.setdefault(names[master_index], []).append(name)
        return found

    def mac_of(self, name: str) -> str | None:
        """The hardware address of the interface `name`."""
        raw = attributes(self._link(name), IFINFO.size).get(_IFLA_ADDRESS)
        return ":".join(f"{b:02x}" for b in raw) if raw else None

    def create_veth(self, name: str, bridge: int, peer: str, peer_netns_fd: int, peer_mac: str, mtu: int) -> None:
        """A veth pair in one request: `name` up and enslaved to the bridge here, `peer` (with its MAC)
        made straight inside the namespace of `peer_netns_fd`."""
        mac = bytes(int(part, 16) for part in peer_mac.split(":"))
        peer_body = (IFINFO.pack(0, 0, 0, 0, 0) + attr(_IFLA_IFNAME, string(peer))
                     + attr(_IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd)) + attr(_IFLA_ADDRESS, mac)
                     + attr(_IFLA_MTU, struct.pack("=I", mtu)))
        info = (attr(_IFLA_INFO_KIND, string("veth"))
                + nested(_IFLA_INFO_DATA, attr(_VETH_INFO_PEER, peer_body)))
        body = (IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + attr(_IFLA_IFNAME, string(name))
                + attr(_IFLA_MTU, struct.pack("=I", mtu)) + attr(_IFLA_MASTER, struct.pack("=I", bridge))
                + nested(_IFLA_LINKINFO, info))
        self._do(RTM_NEWLINK, body, F_CREATE | F_EXCL)

    def set_bridge_port(self, index: int, hairpin: bool, isolated: bool) -> None:
        """The bridge port flags of the interface `index` (a port of a bridge)."""
        protinfo = (attr(_IFLA_BRPORT_MODE, struct.pack("=B", int(hairpin)))
                    + attr(_IFLA_BRPORT_ISOLATED, struct.pack("=B", int(isolated))))
        self._do(_RTM_SETLINK, IFINFO.pack(_AF_BRIDGE, 0, index, 0, 0)
                 + nested(_IFLA_PROTINFO, protinfo))

    def set_up(self, index: int) -> None:
        self._do(_RTM_SETLINK, IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))

    def delete(self, name: str | int) -> bool:
        """Delete the interface `name` (or of that index); False if there was none."""
        if isinstance(name, str):
            request = IFINFO.pack(0, 0, 0, 0, 0) + attr(_IFLA_IFNAME, string(name))
        else:
            request = IFINFO.pack(0, 0, name, 0, 0)
        try:
            self._do(RTM_DELLINK, request)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    def links_on(self, kind: str, lower: int) -> list[int]:
        """The indexes of the links of `kind` (macvlan, ipvlan) whose lower device is in another
        namespace (the host's, where it has the index `lower`). That is what tells an endpoint's link
        inside a container: a container with NET_ADMIN may rename it or change its MAC, but cannot move
        it to another lower device, nor make a link on a device of the host's (its own links have their
        lower device beside them, so none of them is taken for ours)."""
        found = []
        for body in self.dump(_RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0)):
            attrs = attributes(body, IFINFO.size)
            info = attributes(attrs.get(_IFLA_LINKINFO, b""), 0)
            link = attrs.get(_IFLA_LINK, b"")
            if (info.get(_IFLA_INFO_KIND, b"").rstrip(b"\0") == kind.encode() and _IFLA_LINK_NETNSID in attrs
                    and len(link) >= 4 and struct.unpack_from("=i", link)[0] == lower):
                found.append(int(IFINFO.unpack_from(body)[2]))
        return found

    # ----- addresses and routes -------------------------------------------------------

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        """An IPv4 or IPv6 address on the interface (IPv6 without duplicate detection: IPAM chose it)."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        attrs = attr(IFA_LOCAL, ip.packed) + attr(IFA_ADDRESS, ip.packed)
        if ip.version == 6:
            attrs += attr(_IFA_FLAGS, struct.pack("=I", _IFA_F_NODAD))
        self._do(RTM_NEWADDR, IFADDR.pack(family, prefixlen, 0, 0, index) + attrs, F_CREATE | F_EXCL)

    def ensure_address(self, index: int, address: str, prefixlen: int) -> None:
        """`add_address` unless the interface has it already (EEXIST: a restored gateway keeps its own)."""
        try:
            self.add_address(index, address, prefixlen)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise

    def has_default_route(self, family: int = socket.AF_INET) -> bool:
        """Whether the main table has a default route of this family."""
        routes = (RTMSG.unpack_from(body) for body in self.dump(RTM_GETROUTE, RTMSG.pack(family, *[0] * 8)))
        return any(dst_len == 0 and table == RT_TABLE_MAIN for _, dst_len, _, _, table, *_ in routes)

    def add_default_route(self, oif: int, gateway: str | None, family: int = socket.AF_INET) -> None:
        """The default route out of `oif`: through `gateway`, or (None) to the link itself."""
        scope = _RT_SCOPE_UNIVERSE if gateway else _RT_SCOPE_LINK
        attrs = attr(RTA_OIF, struct.pack("=I", oif))
        if gateway:
            attrs += attr(_RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        self._do(RTM_NEWROUTE, RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, _RTPROT_BOOT, scope, _RTN_UNICAST, 0)
                 + attrs, F_CREATE | F_EXCL)


@contextmanager
def conversation(netns_path: str | None = None) -> Iterator[Conversation]:
    """A conversation in the network namespace at `netns_path` (the caller's own without one)."""
    if netns_path:
        with netns(netns_path):
            conversation = Conversation()
    else:
        conversation = Conversation()
    try:
        yield conversation
    finally:
        conversation.close()
