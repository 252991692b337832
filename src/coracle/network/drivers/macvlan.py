"""The macvlan and ipvlan drivers: containers as hosts of the parent interface's own segment.

As Docker has them:

- `network create -d macvlan -o parent=IFACE [-o macvlan_mode=bridge|private|vepa]`: each
  endpoint is a macvlan link of the parent with its own MAC, created directly
  inside the container's namespace under its final name (eth0...). Bridge mode
  (the default) lets containers of the network reach each other too.
- `network create -d ipvlan -o parent=IFACE [-o ipvlan_mode=l2|l3]`: the links
  share the parent's MAC. In l2 mode the containers answer ARP on the segment
  themselves; in l3 mode the host routes for them (the segment's routers need a
  route to the network's subnet via the host), and the default route is the
  interface itself.
- `parent=IFACE.VLAN` makes the 802.1q sub-interface when it does not exist,
  and `network rm` removes it again when this driver made it (and no other
  network uses it); a sub-interface that existed before is left alone.

The subnet is the segment's (`--subnet/--gateway/--ip-range/--aux-address`,
the gateway being the segment's router), so it may contain the host's own
address. Nothing is made on the host per endpoint, and nothing of the
firewall applies: the host itself cannot reach these containers through the
parent (the kernel does not loop macvlan/ipvlan traffic back to the parent), as
with Docker, so published ports are not made for them.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from coracle.errors import Conflict, InvalidParameter
from coracle.netns import netns
from coracle.network import netlink, rtnl
from coracle.network.driver import OPT, Endpoint, NetworkRecord, NetworkSpec

__all__ = ["IpvlanDriver", "MacvlanDriver"]

PARENT_RE = re.compile(r"^(?P<base>[a-zA-Z0-9_-][a-zA-Z0-9_.-]*?)(?:\.(?P<vlan>[0-9]+))?$")
CREATED_PARENT = "CreatedParent"  # driver_state key: the VLAN sub-interface is ours to remove


def _unsupported(exc: NetlinkError, kind: str) -> InvalidParameter | None:
    if exc.code == errno.EOPNOTSUPP:
        return InvalidParameter(f"the kernel of this host has no {kind} support (module {kind} missing)")
    return None


class ParentDriver:
    """What macvlan and ipvlan share: a parent interface, links made inside the container."""

    name = ""
    kind = ""  # the kernel's link kind
    scope = "local"
    exclusive_subnet = False  # the parent's segment: the host's own address may be in it
    mode_option = ""
    modes: Mapping[str, Any] = {}

    def __init__(self, host_netns: str, networks: Callable[[], Sequence[NetworkRecord]]) -> None:
        self.host_netns = host_netns
        self._networks = networks

    def _host(self) -> Any:
        return netlink.netns_socket(self.host_netns)

    def _mode(self, options: Mapping[str, str]) -> Any:
        value = options.get(self.mode_option) or next(iter(self.modes))
        if value not in self.modes:
            raise InvalidParameter(f"invalid {self.mode_option} {value!r} for the {self.name} driver: "
                                   f"expected one of {', '.join(self.modes)}")
        return self.modes[value]

    # ----- networks ------------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> None:
        for key in spec.options:
            if key not in ("parent", self.mode_option) and not key.startswith(OPT):
                raise InvalidParameter(f"unknown option {key!r} for the {self.name} driver "
                                       f"(parent and {self.mode_option} are known)")
        self._mode(spec.options)
        parent = spec.options.get("parent") or ""
        if not parent:
            raise InvalidParameter(f"the {self.name} driver needs a parent interface: -o parent=IFACE[.VLAN]")
        match = PARENT_RE.match(parent)
        if not match or len(parent) > 15 or (match["vlan"] and not 1 <= int(match["vlan"]) <= 4094):
            raise InvalidParameter(f"invalid parent interface {parent!r}: expected IFACE or IFACE.VLAN "
                                   "(VLAN 1-4094), at most 15 characters")
        for other in self._networks():
            if other.driver in ("macvlan", "ipvlan") and other.interface == parent:
                raise Conflict(f"network {other.name} is already using parent interface {parent}")

    def create(self, network: NetworkRecord) -> NetworkRecord:
        parent = network.options["parent"]
        match = PARENT_RE.match(parent)
        assert match is not None  # validate() checked it
        created = False
        with self._host() as ipr:
            if netlink.index(ipr, parent) is None:
                base = netlink.index(ipr, match["base"]) if match["vlan"] else None
                if base is None:
                    raise InvalidParameter(f"-o parent interface was not found on the host: {parent}")
                try:
                    ipr.link("add", ifname=parent, kind="vlan", link=base, vlan_id=int(match["vlan"]))
                except NetlinkError as exc:
                    raise _unsupported(exc, "8021q") or exc from None
                created = True
            try:
                netlink.link_up(ipr, parent)
                self._probe(ipr, parent)
            except BaseException:
                if created:
                    netlink.delete_link(ipr, parent)
                raise
        state = {CREATED_PARENT: True} if created else {}
        return replace(network, interface=parent, driver_state=state)

    def _probe(self, ipr: Any, parent: str) -> None:
        """A throwaway link of our kind on the parent: a kernel without the driver is refused now,
        at `network create`, not at the first container's start."""
        name = f"{self.kind[:3]}probe{os.getpid() % 100000}"
        try:
            ipr.link("add", ifname=name, kind=self.kind, link=netlink.index(ipr, parent),
                     **self._link_mode(self.modes[next(iter(self.modes))]))
        except NetlinkError as exc:
            raise _unsupported(exc, self.kind) or exc from None
        netlink.delete_link(ipr, name)

    def _link_mode(self, mode: Any) -> dict[str, Any]:
        """The link attributes of a mode (IFLA_MACVLAN_MODE / IFLA_IPVLAN_MODE): each driver's own."""
        return {}

    def delete(self, network: NetworkRecord) -> None:
        if not network.driver_state.get(CREATED_PARENT):
            return
        if any(o.id != network.id and o.interface == network.interface for o in self._networks()):
            return
        with self._host() as ipr:
            netlink.delete_link(ipr, network.interface)

    # ----- endpoints -----------------------------------------------------------------

    def join(self, network: NetworkRecord, endpoint: Endpoint, netns_path: str) -> Endpoint:
        """The link, made on the parent straight into the container's namespace, addressed and routed."""
        mode = self._mode(network.options)
        sub, sub6 = network.subnet4, network.subnet6
        with rtnl.conversation(netns_path) as inside:
            ifname = endpoint.interface
            if not ifname or inside.index(ifname) is not None:
                ifname = netlink.free_ifname(inside)
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with self._host() as ipr:
                    parent = netlink.index(ipr, network.interface)
                    if parent is None:
                        raise Conflict(f"the parent interface {network.interface} of network {network.name} "
                                       "is gone from the host")
                    ipr.link("add", ifname=ifname, kind=self.kind, link=parent, mtu=network.mtu, net_ns_fd=fd,
                             **self._link_mode(mode), **self._address(endpoint))
            finally:
                os.close(fd)
            try:
                if sub6 is not None:
                    with netns(netns_path):  # IPv6 may be off by default in the container's namespace
                        netlink.sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "0")
                routed = self._routed_by_host(mode)
                netlink.configure_peer(inside, ifname, endpoint.ipv4, sub.network.prefixlen,
                                       None if routed else endpoint.gateway or None,
                                       (endpoint.ipv6, sub6.network.prefixlen) if sub6 is not None else None,
                                       None if routed else endpoint.ipv6_gateway or None)
                if routed and endpoint.gateway:
                    netlink.default_route_via(inside, ifname)
                mac = inside.mac_of(ifname)
            except BaseException:
                inside.delete(ifname)
                raise
        return replace(endpoint, interface=ifname, mac_address=mac or endpoint.mac_address)

    def _address(self, endpoint: Endpoint) -> dict[str, str]:
        """The endpoint's own MAC (macvlan); ipvlan links have the parent's."""
        return {}

    def _routed_by_host(self, mode: Any) -> bool:
        """Whether the host routes the container's traffic (ipvlan l3): then its default route is the
        interface itself, not a gateway on the segment."""
        return False

    def leave(self, network: NetworkRecord, endpoint: Endpoint) -> None:
        """The endpoint's link inside a running container's namespace (with a stopped one it is gone
        already), told by its lower device, not by its name or MAC: a container with NET_ADMIN may
        change those, and must still lose the network when it is disconnected."""
        if not endpoint.sandbox:
            return
        with self._host() as ipr:
            parent = netlink.index(ipr, network.interface)
        if parent is None:
            return  # the links went with their parent
        try:
            with rtnl.conversation(endpoint.sandbox) as inside:
                for index in inside.links_on(self.kind, parent):
                    inside.delete(index)
        except OSError:
            pass  # the namespace is gone: nothing left to remove

    def restore(self, network: NetworkRecord, endpoints: Sequence[tuple[Endpoint, str]],
                dry_run: bool = False) -> list[str]:
        """The parent's VLAN sub-interface made again if it was ours, then the links of `endpoints`
        that are missing from their namespaces."""
        found = []
        with self._host() as ipr:
            if netlink.index(ipr, network.interface) is None and network.driver_state.get(CREATED_PARENT):
                found.append(f"parent {network.interface} of {network.name}")
        if found and not dry_run:
            self.create(replace(network, driver_state={}))
        for ep, ns in endpoints:
            with netlink.netns_socket(ns) as cipr:
                missing = not ep.interface or netlink.index(cipr, ep.interface) is None
            if missing:
                found.append(f"{self.kind} {ep.interface or '?'} on {ep.network_name} ({ep.ipv4})")
                if not dry_run:
                    self.join(network, ep, ns)
        return found


class MacvlanDriver(ParentDriver):
    """Docker's `macvlan` driver."""

    name = kind = "macvlan"
    mode_option = "macvlan_mode"
    modes = {"bridge": "bridge", "private": "private", "vepa": "vepa"}

    def _link_mode(self, mode: Any) -> dict[str, Any]:
        return {"macvlan_mode": mode}

    def _address(self, endpoint: Endpoint) -> dict[str, str]:
        return {"address": endpoint.mac_address} if endpoint.mac_address else {}


class IpvlanDriver(ParentDriver):
    """Docker's `ipvlan` driver."""

    name = kind = "ipvlan"
    mode_option = "ipvlan_mode"
    modes = {"l2": 0, "l3": 1}

    def _link_mode(self, mode: Any) -> dict[str, Any]:
        return {"ipvlan_mode": mode}

    def _routed_by_host(self, mode: Any) -> bool:
        return bool(mode == self.modes["l3"])
