"""What a new network could collide with on the host: its routes and its addresses, mirrored.

Every `network create` checks its subnet against the host's routes (a subnet picked
from the pools) or addresses (a subnet given by the user). Reading them each time
cost 1.3-2 ms at 500 networks, since every bridge adds a route and an address, and
grew with every network. They are read once; after that, the notifications the
kernel multicasts are applied on each use (a create reads the few of the last
change): the same answer, at a cost that does not grow. If the kernel drops
notifications (a full socket buffer: ENOBUFS), everything is read again.

The kernel removes some routes without a notification, and the mirror follows what
it can see: a deleted link takes all its routes, a link that goes down its IPv4
ones, and an IPv4 address that goes may take routes with it (then, unless its link
went too, as when `network rm` deletes a bridge, the routes are read again).

Only the main table's routes count (a default route never does, nor IPv6 host routes
or multicast): what an address of a new network could collide with.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import threading

from coracle.netns import netns
from coracle.network.ipam import Network, Span
from coracle.network.nlmsg import HEADER, Socket, attribute, attributes
from coracle.network.rtnl import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDR,
    IFF_UP,
    IFINFO,
    RT_TABLE_MAIN,
    RTA_OIF,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMSG,
)

_RTA_DST, _RTA_PRIORITY, _RTA_TABLE = 1, 6, 15
_RT_TABLE_COMPAT = 252  # a table above 255: its number is in RTA_TABLE
_GROUPS = 0x1 | 0x10 | 0x40 | 0x100 | 0x400  # links, IPv4 addresses, IPv4 routes, IPv6 addresses, IPv6 routes
_BITS = {socket.AF_INET: 32, socket.AF_INET6: 128}
RouteKey = tuple[int, int, int, int, int]  # destination, prefix length, tos, priority, output interface
AddressKey = tuple[int, int]  # address, interface index


def _u32(raw: bytes | None) -> int:
    return struct.unpack("=I", raw)[0] if raw and len(raw) >= 4 else 0


def _route(body: bytes) -> tuple[int, RouteKey, Span] | None:
    """(family, identity, range) of a route message worth keeping, None for the others."""
    family, length, _src, tos, table, *_ = RTMSG.unpack_from(body)
    bits = _BITS.get(family)
    if bits is None or length == 0 or (family == socket.AF_INET6 and length == bits) or \
            table not in (RT_TABLE_MAIN, _RT_TABLE_COMPAT):
        return None
    attrs = attributes(body, RTMSG.size)
    if _RTA_TABLE in attrs and _u32(attrs[_RTA_TABLE]) != RT_TABLE_MAIN:
        return None
    first = int.from_bytes(attrs.get(_RTA_DST, b""), "big")
    if family == socket.AF_INET6 and first >> 120 == 0xFF:  # multicast
        return None
    key = (first, length, tos, _u32(attrs.get(_RTA_PRIORITY)), _u32(attrs.get(RTA_OIF)))
    return family, key, (first, first | ((1 << (bits - length)) - 1))


def _address(body: bytes) -> tuple[int, AddressKey] | None:
    family, _length, _flags, _scope, index = IFADDR.unpack_from(body)
    raw = attribute(body, IFADDR.size, IFA_LOCAL) or attribute(body, IFADDR.size, IFA_ADDRESS)
    if family not in _BITS or not raw:
        return None
    return family, (int.from_bytes(raw, "big"), index)


class HostNetwork:
    """The routes (main table) and addresses of the network namespace at `netns_path`, mirrored."""

    def __init__(self, netns_path: str) -> None:
        self._ns = netns_path
        self._lock = threading.Lock()
        self._watch: socket.socket | None = None
        self._routes: dict[int, dict[RouteKey, Span]] = {}
        self._addresses: dict[int, set[AddressKey]] = {}
        self._suspects: set[int] = set()  # links that lost an IPv4 address: their routes may have gone silently
        self._gone: set[int] = set()  # links deleted (since the last catch-up): all their routes went

    def close(self) -> None:
        with self._lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def route_spans(self, family: int = socket.AF_INET) -> list[Span]:
        """The ranges of the main table's routes of `family`, as of now."""
        with self._lock:
            self._catch_up()
            return list(self._routes[family].values())

    def addresses_in(self, network: Network) -> list[tuple[str, int]]:
        """(address, interface index) of every address of the namespace inside `network`, as of now."""
        family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
        first, last = int(network.network_address), int(network.broadcast_address)
        with self._lock:
            self._catch_up()
            found = [(a, i) for a, i in self._addresses[family] if first <= a <= last]
        return [(str(ipaddress.IPv4Address(a) if family == socket.AF_INET else ipaddress.IPv6Address(a)), i)
                for a, i in sorted(found)]

    # ----- keeping up -------------------------------------------------------------------

    def _catch_up(self) -> None:
        if self._watch is None or not self._drain():
            self._load()
        if self._suspects - self._gone:  # an address went, not with its link: which routes went with it is unknown
            self._load()
        self._suspects.clear()
        self._gone.clear()

    def _load(self) -> None:
        """Subscribe (once), then read everything: notifications from then on are applied on top (what is
        both listed and notified has the same key: applying it again changes nothing)."""
        if self._watch is None:
            with netns(self._ns):
                watch = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                      socket.NETLINK_ROUTE)
            watch.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            watch.bind((0, _GROUPS))
            self._watch = watch
        self._routes = {family: {} for family in _BITS}
        self._addresses = {family: set() for family in _BITS}
        with netns(self._ns):
            reader = Socket(socket.NETLINK_ROUTE, strict=True)  # the kernel filters out all but the main table
        try:
            for family in _BITS:
                try:
                    routes = reader.dump(RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0))
                    addresses = reader.dump(RTM_GETADDR, IFADDR.pack(family, 0, 0, 0, 0))
                except OSError as exc:
                    if exc.errno != errno.EAFNOSUPPORT:  # a kernel without IPv6 has no IPv6 routes
                        raise
                    continue
                for body in routes:
                    self._apply(RTM_NEWROUTE, body)
                for body in addresses:
                    self._apply(RTM_NEWADDR, body)
        finally:
            reader.close()

    def _drain(self) -> bool:
        """Apply every notification waiting; False if the kernel dropped some (everything must be read)."""
        assert self._watch is not None
        while True:
            try:
                data = self._watch.recv(1 << 16)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return False
                raise
            offset = 0
            while offset + HEADER.size <= len(data):
                size, kind, *_ = HEADER.unpack_from(data, offset)
                if size < HEADER.size:
                    return False
                self._apply(kind, data[offset + HEADER.size:offset + size])
                offset += (size + 3) & ~3

    def _apply(self, kind: int, body: bytes) -> None:
        if kind in (RTM_NEWROUTE, RTM_DELROUTE) and len(body) >= RTMSG.size:
            route = _route(body)
            if route is not None:
                family, route_key, span = route
                if kind == RTM_NEWROUTE:
                    self._routes[family][route_key] = span
                else:
                    self._routes[family].pop(route_key, None)
        elif kind in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= IFADDR.size:
            address = _address(body)
            if address is not None:
                family, address_key = address
                if kind == RTM_NEWADDR:
                    self._addresses[family].add(address_key)
                else:
                    self._addresses[family].discard(address_key)
                    if family == socket.AF_INET:
                        self._suspects.add(address_key[1])
        elif kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= IFINFO.size:
            self._link_changed(kind, body)

    def _link_changed(self, kind: int, body: bytes) -> None:
        """A deleted link takes all its routes with it, a link that goes down its IPv4 ones (they come back,
        announced, when it comes up), and the kernel says nothing of either."""
        _family, _type, index, flags, _change = IFINFO.unpack_from(body)
        gone = kind == RTM_DELLINK
        if not gone and flags & IFF_UP:
            return
        for family in ((socket.AF_INET, socket.AF_INET6) if gone else (socket.AF_INET,)):
            routes = self._routes[family]
            for key in [key for key in routes if key[4] == index]:
                del routes[key]
        if gone:
            self._gone.add(index)
            for family in _BITS:
                self._addresses[family] = {a for a in self._addresses[family] if a[1] != index}
