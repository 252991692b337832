"""The overlay's data plane on one host: a kernel VXLAN device per network, programmed statically.

The device is the lower device of the network's macvlan links (bridge mode):
the host's gateway link and one link per local container, made straight into
the container's namespace. Frames between local containers go from macvlan to
macvlan; frames to another host go from the container's link into the VXLAN
device, with no veth, bridge or host IP hop on the way. The device has
`nolearning` and no default (all-zero) FDB entry, so nothing is ever flooded to
other hosts and no multicast group is used: each remote container is one FDB
entry (its MAC -> the underlay address of its host) and a permanent neighbour
entry per address (IPv4 and, on dual-stack networks, IPv6 -> MAC), which the
device's `proxy` flag uses to answer the local containers' ARP requests and
IPv6 neighbour solicitations itself. All of it is kernel state: traffic keeps
flowing whatever happens to the daemon or to etcd.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from coracle.network.netlink import index

PORT = 4789  # IANA's VXLAN port
OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8: the overlay MTU is the underlay's minus this


def ensure_device(ipr: IPRoute, name: str, vni: int, local: str, mtu: int) -> None:
    """The VXLAN device of a network (created or adopted) and up; `mtu` is the inner frames' (the
    endpoints'), which the macvlan links on it may not exceed."""
    if index(ipr, name) is None:
        ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local, vxlan_port=PORT,
                 vxlan_learning=0, vxlan_proxy=1, mtu=mtu)
    ipr.link("set", index=index(ipr, name), state="up")


def make_gateway(ipr: IPRoute, name: str, device: str, mtu: int) -> None:
    """The host's own link on the network: a macvlan (bridge mode) of the VXLAN device, for the
    gateway address. The host cannot use the lower device itself: the kernel hands a macvlan's
    frames to its sibling links or to the lower device's transmit path, never to its own stack."""
    ipr.link("add", ifname=name, kind="macvlan", link=index(ipr, device), macvlan_mode="bridge", mtu=mtu)


def underlay_mtu(ipr: IPRoute, local: str) -> int:
    """The MTU of the interface holding the advertised address (1500 when it cannot be found)."""
    for msg in ipr.get_addr(family=socket.AF_INET):
        if msg.get_attr("IFA_ADDRESS") == local:
            return int(ipr.get_links(msg["index"])[0].get_attr("IFLA_MTU"))
    return 1500


def _ignore_missing(exc: NetlinkError) -> None:
    if exc.code not in (errno.ENOENT, errno.ENODEV, errno.ESRCH):
        raise exc


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def add_remote(ipr: IPRoute, device: str, mac: str, ips: Sequence[str], host: str) -> None:
    """Teach this host where a remote container is: an FDB entry and neighbour entries."""
    idx = index(ipr, device)
    if idx is None:
        return
    # states spelled out: pyroute2 fills them in for add, not replace
    ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=host, flags=ndmsg.flags["self"],
            state=ndmsg.states["permanent"] | ndmsg.states["noarp"])
    for ip in ips:
        ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, family=_family(ip), state=ndmsg.states["permanent"])


def remove_remote(ipr: IPRoute, device: str, mac: str, ips: Sequence[str]) -> None:
    """Forget a remote container; entries already gone are fine."""
    idx = index(ipr, device)
    if idx is None:
        return
    steps: list[tuple[str, dict[str, Any]]] = [
        *(("neigh", {"dst": ip, "lladdr": mac, "ifindex": idx, "family": _family(ip)}) for ip in ips),
        ("fdb", {"ifindex": idx, "lladdr": mac, "flags": ndmsg.flags["self"]}),
    ]
    for table, spec in steps:
        try:
            getattr(ipr, table)("del", **spec)
        except NetlinkError as exc:
            _ignore_missing(exc)


def remotes(ipr: IPRoute, device: str) -> dict[str, str]:
    """The permanent neighbour entries of a device: {ip: mac} (what the host knows of other hosts)."""
    idx = index(ipr, device)
    if idx is None:
        return {}
    out = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_neighbours(ifindex=idx, family=family):
            if msg["state"] & ndmsg.states["permanent"]:
                out[msg.get_attr("NDA_DST")] = msg.get_attr("NDA_LLADDR")
    return out
