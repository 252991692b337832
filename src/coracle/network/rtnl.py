"""A synchronous rtnetlink conversation: the requests a container's start and exit make.

Why not pyroute2 here: each of its requests runs its own event loop, 0.4-0.7 ms of
Python per request here and 1.3 ms per socket, and joining a container to a bridge
took ~14 of them: 17 ms of every bridge start, for what the kernel does in
microseconds. The same requests, packed with `struct` and sent on a plain netlink
socket, take ~0.05 ms each (the address dump of `network create` is here for the
same reason), and so do a bridge's address and link-up, which the daemon's start
makes for every network (pyroute2 took ~2 ms a bridge: a second at 500 networks).
pyroute2 stays for everything else (making bridges, VXLAN forwarding entries,
macvlan and ipvlan parents), where requests are rare and its breadth is worth more
than its cost.

A socket belongs to the network namespace it was made in, so a `Conversation`
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

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/if_bridge.h
_HEADER = struct.Struct("=IHHII")          # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")         # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")          # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")       # rtmsg: family, dst/src len, tos, table, protocol, scope, type, flags
_NLA = struct.Struct("=HH")
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK, _RTM_SETLINK = 16, 17, 18, 19
_RTM_NEWADDR, _RTM_GETADDR, _RTM_NEWROUTE, _RTM_GETROUTE = 20, 22, 24, 26
_F_REQUEST, _F_ACK, _F_EXCL, _F_CREATE, _F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
_NLA_F_NESTED = 0x8000
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINK, _IFLA_MASTER = 1, 3, 4, 5, 10
_IFLA_PROTINFO, _IFLA_LINKINFO, _IFLA_NET_NS_FD, _IFLA_LINK_NETNSID = 12, 18, 28, 37
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_IFLA_BRPORT_MODE, _IFLA_BRPORT_ISOLATED = 4, 33
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_IFA_F_NODAD = 0x02  # an address without duplicate detection
_RTA_OIF, _RTA_GATEWAY = 4, 5
_RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RT_SCOPE_LINK, _RTN_UNICAST = 254, 3, 0, 253, 1
_IFF_UP = 0x1
_AF_BRIDGE = 7
LOOPBACK_INDEX = 1  # the kernel makes `lo` first in every network namespace


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The top-level attributes of a message body from `offset` (the last of a repeated kind wins)."""
    out = {}
    while offset + _NLA.size <= len(data):
        size, kind = _NLA.unpack_from(data, offset)
        if size < _NLA.size:
            break
        out[kind & 0x3FFF] = data[offset + _NLA.size:offset + size]
        offset += (size + 3) & ~3
    return out


def _attribute(data: bytes, offset: int, kind: int) -> bytes | None:
    """The first top-level attribute of `kind` from `offset`: a scan that stops there, without the
    dictionary of `_attributes` (what a dump of hundreds of messages spends its time on)."""
    while offset + _NLA.size <= len(data):
        size, found = _NLA.unpack_from(data, offset)
        if size < _NLA.size:
            break
        if found & 0x3FFF == kind:
            return data[offset + _NLA.size:offset + size]
        offset += (size + 3) & ~3
    return None


class Conversation:
    """One rtnetlink socket, in the namespace that was current when it was made."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sequence = 0

    def close(self) -> None:
        self._sock.close()

    # ----- the exchange -------------------------------------------------------------

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._sequence += 1
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, _F_REQUEST | flags, self._sequence, 0) + body)
        return self._sequence

    def _replies(self, sequence: int) -> Iterator[tuple[int, bytes]]:
        """(type, body) of each answer to `sequence` up to its end (an ack, an error or a dump's end)."""
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                size, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
                if size < _HEADER.size:  # malformed: never loop on it
                    raise OSError(errno.EPROTO, "truncated netlink message")
                body = data[offset + _HEADER.size:offset + size]
                offset += (size + 3) & ~3
                if seq != sequence:
                    continue
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                if kind == _NLMSG_DONE:
                    return
                yield kind, body

    def _do(self, kind: int, body: bytes, flags: int = 0) -> None:
        """A request answered by an acknowledgement (or the error that raises)."""
        for _ in self._replies(self._send(kind, _F_ACK | flags, body)):
            pass

    def _dump(self, kind: int, body: bytes) -> list[bytes]:
        return [reply for _, reply in self._replies(self._send(kind, _F_DUMP, body))]

    # ----- links --------------------------------------------------------------------

    def _link(self, name: str) -> bytes:
        """The kernel's description of the interface `name` (OSError ENODEV if there is none)."""
        request = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, _name(name))
        for _, body in self._replies(self._send(_RTM_GETLINK, 0, request)):
            return body  # the generator is left before the kernel's next message: there is none
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    def existing(self, name: str) -> int:
        """The index of an interface that must exist (OSError ENODEV, naming it, otherwise)."""
        try:
            return int(_IFINFO.unpack_from(self._link(name))[2])
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
        for body in self._dump(_RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)):
            name = _attributes(body, _IFINFO.size).get(_IFLA_IFNAME, b"")
            found.add(name.rstrip(b"\0").decode(errors="surrogateescape"))
        return found

    def ports(self) -> dict[str, list[str]]:
        """The names of the ports of every bridge (or other master device) of the namespace, by the
        master's name: one dump for all of them. A dump per bridge, decoded by pyroute2, made the
        daemon's start quadratic in networks (minutes at 500)."""
        names: dict[int, str] = {}
        masters: list[tuple[str, int]] = []
        for body in self._dump(_RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)):
            attrs = _attributes(body, _IFINFO.size)
            name = attrs.get(_IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="surrogateescape")
            names[int(_IFINFO.unpack_from(body)[2])] = name
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
        raw = _attributes(self._link(name), _IFINFO.size).get(_IFLA_ADDRESS)
        return ":".join(f"{b:02x}" for b in raw) if raw else None

    def create_veth(self, name: str, bridge: int, peer: str, peer_netns_fd: int, peer_mac: str, mtu: int) -> None:
        """A veth pair in one request: `name` up and enslaved to the bridge here, `peer` (with its MAC)
        made straight inside the namespace of `peer_netns_fd`."""
        mac = bytes(int(part, 16) for part in peer_mac.split(":"))
        peer_body = (_IFINFO.pack(0, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, _name(peer))
                     + _attr(_IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd)) + _attr(_IFLA_ADDRESS, mac)
                     + _attr(_IFLA_MTU, struct.pack("=I", mtu)))
        info = (_attr(_IFLA_INFO_KIND, _name("veth"))
                + _attr(_IFLA_INFO_DATA | _NLA_F_NESTED, _attr(_VETH_INFO_PEER, peer_body)))
        body = (_IFINFO.pack(0, 0, 0, _IFF_UP, _IFF_UP) + _attr(_IFLA_IFNAME, _name(name))
                + _attr(_IFLA_MTU, struct.pack("=I", mtu)) + _attr(_IFLA_MASTER, struct.pack("=I", bridge))
                + _attr(_IFLA_LINKINFO | _NLA_F_NESTED, info))
        self._do(_RTM_NEWLINK, body, _F_CREATE | _F_EXCL)

    def set_bridge_port(self, index: int, hairpin: bool, isolated: bool) -> None:
        """The bridge port flags of the interface `index` (a port of a bridge)."""
        protinfo = (_attr(_IFLA_BRPORT_MODE, struct.pack("=B", int(hairpin)))
                    + _attr(_IFLA_BRPORT_ISOLATED, struct.pack("=B", int(isolated))))
        self._do(_RTM_SETLINK, _IFINFO.pack(_AF_BRIDGE, 0, index, 0, 0)
                 + _attr(_IFLA_PROTINFO | _NLA_F_NESTED, protinfo))

    def set_up(self, index: int) -> None:
        self._do(_RTM_SETLINK, _IFINFO.pack(0, 0, index, _IFF_UP, _IFF_UP))

    def delete(self, name: str | int) -> bool:
        """Delete the interface `name` (or of that index); False if there was none."""
        if isinstance(name, str):
            request = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, _name(name))
        else:
            request = _IFINFO.pack(0, 0, name, 0, 0)
        try:
            self._do(_RTM_DELLINK, request)
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
        for body in self._dump(_RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)):
            attrs = _attributes(body, _IFINFO.size)
            info = _attributes(attrs.get(_IFLA_LINKINFO, b""), 0)
            link = attrs.get(_IFLA_LINK, b"")
            if (info.get(_IFLA_INFO_KIND, b"").rstrip(b"\0") == kind.encode() and _IFLA_LINK_NETNSID in attrs
                    and len(link) >= 4 and struct.unpack_from("=i", link)[0] == lower):
                found.append(int(_IFINFO.unpack_from(body)[2]))
        return found

    # ----- addresses and routes -------------------------------------------------------

    def addresses_in(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[tuple[str, int]]:
        """(address, interface index) of every address of the namespace inside `network`.

        On every `network create` with a subnet of the user's, against every bridge's address: each
        message is matched on its raw address bytes, and only the (rare) matches are decoded, which
        keeps a host with 500 bridges at ~0.8 ms, most of it the kernel's dump (decoding every
        address took 2.4 ms)."""
        family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
        base, mask = int(network.network_address), int(network.netmask)
        found = []
        for body in self._dump(_RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, 0)):
            raw = _attribute(body, _IFADDR.size, _IFA_LOCAL) or _attribute(body, _IFADDR.size, _IFA_ADDRESS)
            if raw and int.from_bytes(raw, "big") & mask == base:
                found.append((str(ipaddress.ip_address(raw)), int(_IFADDR.unpack_from(body)[4])))
        return found

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        """An IPv4 or IPv6 address on the interface (IPv6 without duplicate detection: IPAM chose it)."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        attrs = _attr(_IFA_LOCAL, ip.packed) + _attr(_IFA_ADDRESS, ip.packed)
        if ip.version == 6:
            attrs += _attr(_IFA_FLAGS, struct.pack("=I", _IFA_F_NODAD))
        self._do(_RTM_NEWADDR, _IFADDR.pack(family, prefixlen, 0, 0, index) + attrs, _F_CREATE | _F_EXCL)

    def ensure_address(self, index: int, address: str, prefixlen: int) -> None:
        """`add_address` unless the interface has it already (EEXIST: a restored gateway keeps its own)."""
        try:
            self.add_address(index, address, prefixlen)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise

    def has_default_route(self, family: int = socket.AF_INET) -> bool:
        """Whether the main table has a default route of this family."""
        routes = (_RTMSG.unpack_from(body) for body in self._dump(_RTM_GETROUTE, _RTMSG.pack(family, *[0] * 8)))
        return any(dst_len == 0 and table == _RT_TABLE_MAIN for _, dst_len, _, _, table, *_ in routes)

    def add_default_route(self, oif: int, gateway: str | None, family: int = socket.AF_INET) -> None:
        """The default route out of `oif`: through `gateway`, or (None) to the link itself."""
        scope = _RT_SCOPE_UNIVERSE if gateway else _RT_SCOPE_LINK
        attrs = _attr(_RTA_OIF, struct.pack("=I", oif))
        if gateway:
            attrs += _attr(_RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        self._do(_RTM_NEWROUTE, _RTMSG.pack(family, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT, scope, _RTN_UNICAST, 0)
                 + attrs, _F_CREATE | _F_EXCL)


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
