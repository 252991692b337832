"""The bridge driver: a Linux bridge per network, a veth pair per endpoint, nftables rules.

The host end of each veth is a port of the network's bridge (hairpin on,
isolated when ICC is off); the container end is created directly inside the
container's namespace under its final name (eth0, eth1...), gets the address,
MAC and default route (none for internal networks). Isolation between
networks, masquerading and published ports are the firewall's (firewall/).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

from pyroute2 import IPRoute

from coracle.errors import Conflict, InvalidParameter
from coracle.faults import fault
from coracle.netns import netns
from coracle.network import netlink, rtnl
from coracle.network.driver import OPT, Endpoint, NetworkRecord, NetworkSpec
from coracle.network.firewall import BridgeRules, FirewallDriver

__all__ = ["BridgeDriver"]

DEVICE_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")

MakeDevice = Callable[[IPRoute, "NetworkRecord"], None]


def make_bridge(ipr: IPRoute, network: NetworkRecord) -> None:
    """A bridge network's gateway device: the Linux bridge its endpoints' veths are ports of."""
    ipr.link("add", ifname=network.interface, kind="bridge", mtu=network.mtu)


def flag(options: Mapping[str, str], key: str, default: bool) -> bool:
    """A true/false driver option (com.docker.network.<key>), refused clearly when it is neither."""
    value = options.get(OPT + key)
    if value is None:
        return default
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0"):
        return False
    raise InvalidParameter(f"invalid value {value!r} for option {OPT + key}: expected true or false")


class BridgeDriver:
    """Docker's `bridge` driver (also the default `bridge` network)."""

    name = "bridge"
    scope = "local"
    exclusive_subnet = True  # the subnet is routed through our bridge: it must not overlap the host's

    def __init__(self, host_netns: str, firewall: FirewallDriver) -> None:
        self.host_netns = host_netns
        self.firewall = firewall

    def _host(self) -> AbstractContextManager[IPRoute]:
        return netlink.netns_socket(self.host_netns)

    def _host_sysctl(self, path: str, value: str) -> None:
        with netns(self.host_netns):
            netlink.sysctl(path, value)

    # ----- networks ------------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> None:
        flag(spec.options, "bridge.enable_icc", True)
        flag(spec.options, "bridge.enable_ip_masquerade", True)

    def check_device(self, network: NetworkRecord, others: Sequence[NetworkRecord]) -> None:
        """The bridge's name: valid, not another network's, no device of the host's."""
        dev = network.interface
        if not DEVICE_RE.match(dev):
            raise InvalidParameter(f"invalid bridge name {dev!r}: at most 15 characters [a-zA-Z0-9_.-]")
        if any(o.interface == dev and o.driver == self.name for o in others):
            raise Conflict(f"bridge name {dev} is already used by another network")
        with rtnl.conversation(self.host_netns) as host:
            if host.index(dev) is not None:
                raise Conflict(f"a device named {dev} already exists on the host")

    def rules(self, network: NetworkRecord) -> BridgeRules:
        sub6 = network.subnet6
        return BridgeRules(network.interface, str(network.subnet4.network), network.internal, network.icc,
                           network.masquerade, str(sub6.network) if sub6 else None)

    def create(self, network: NetworkRecord, make_device: MakeDevice = make_bridge) -> NetworkRecord:
        """The gateway device (made by `make_device` unless it exists: another driver may make another
        kind, see drivers/overlay.py), addressed and up, and the network's firewall rules."""
        try:
            self.plumb(network, make_device)
            self.firewall.add_network(self.rules(network))
        except BaseException:
            self.delete(network)
            raise
        return network

    def delete(self, network: NetworkRecord) -> None:
        self.firewall.remove_network(self.rules(network))
        with self._host() as ipr:
            netlink.delete_link(ipr, network.interface)

    def plumb(self, network: NetworkRecord, make_device: MakeDevice = make_bridge) -> None:
        """The gateway device: created or adopted, addressed, up, route_localnet as the firewall needs.

        The IPv4 address comes before the link is up and the IPv6 sysctls between the two steps:
        the kernel makes the link-local address when the link comes up."""
        sub, sub6, name = network.subnet4, network.subnet6, network.interface
        with rtnl.conversation(self.host_netns) as host:
            index = host.index(name)
            if index is None:
                with self._host() as ipr:
                    make_device(ipr, network)
                index = host.existing(name)
            host.ensure_address(index, str(sub.gateway), sub.network.prefixlen)
            # DNAT of 127.0.0.1:port to a container needs loopback-sourced packets routed into the bridge;
            # without that DNAT the setting would only open the host's loopback to the bridge
            self._host_sysctl(f"net/ipv4/conf/{name}/route_localnet", "1" if self.firewall.localhost_dnat else "0")
            if sub6 is not None:
                self._host_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0")
                # no duplicate detection of the link-local address made at link-up: while it is tentative the
                # kernel sends no neighbour solicitation for forwarded packets (published ports lose packets)
                self._host_sysctl(f"net/ipv6/conf/{name}/accept_dad", "0")
                self._host_sysctl("net/ipv6/conf/all/forwarding", "1")
                host.ensure_address(index, str(sub6.gateway), sub6.network.prefixlen)
            host.set_up(index)

    # ----- endpoints -----------------------------------------------------------------

    def join(self, network: NetworkRecord, endpoint: Endpoint, netns_path: str) -> Endpoint:
        """The veth pair of an endpoint (host side on the bridge), its address and routes inside."""
        sub, sub6 = network.subnet4, network.subnet6
        veth = endpoint.host_interface or self.veth_name(endpoint)
        with rtnl.conversation(netns_path) as inside:
            ifname = endpoint.interface
            if not ifname or inside.index(ifname) is not None:
                ifname = netlink.free_ifname(inside)
            with rtnl.conversation(self.host_netns) as host:
                netlink.add_veth(host, veth, network.interface, netns_path, ifname, endpoint.mac_address,
                                 network.mtu, isolated=not network.icc)
            fault("network-after-veth")
            joined = replace(endpoint, interface=ifname, host_interface=veth)
            if sub6 is not None:
                with netns(netns_path):  # IPv6 may be off by default in the container's namespace
                    netlink.sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "0")
            netlink.configure_peer(inside, ifname, endpoint.ipv4, sub.network.prefixlen, endpoint.gateway or None,
                                   (endpoint.ipv6, sub6.network.prefixlen) if sub6 is not None else None,
                                   endpoint.ipv6_gateway or None)
        return joined

    def leave(self, network: NetworkRecord, endpoint: Endpoint) -> None:
        """The host end of the veth (its peer goes with it); named from the endpoint even when a join
        failed before recording it."""
        with rtnl.conversation(self.host_netns) as host:  # on every exit: not through pyroute2 (see rtnl.py)
            host.delete(endpoint.host_interface or self.veth_name(endpoint))

    @staticmethod
    def veth_name(endpoint: Endpoint) -> str:
        return "veth" + endpoint.id[:11]

    def restore(self, network: NetworkRecord, endpoints: Sequence[tuple[Endpoint, str]],
                dry_run: bool = False) -> list[str]:
        """The bridge made again (when not a dry run), then the veths of `endpoints` that are missing."""
        if not dry_run:
            self.plumb(network)
        with rtnl.conversation(self.host_netns) as host:
            missing = [(ep, ns) for ep, ns in endpoints
                       if ep.host_interface and host.index(ep.host_interface) is None]
        found = []
        for ep, ns in missing:
            found.append(f"veth {ep.host_interface} on {ep.network_name} ({ep.ipv4})")
            if not dry_run:
                self.join(network, ep, ns)
        return found

    def leftovers(self, networks: Sequence[NetworkRecord], keep: set[str]) -> list[str]:
        """Ports of the networks' bridges that no endpoint in `keep` (host interface names) owns."""
        with rtnl.conversation(self.host_netns) as host:
            ports = host.ports()
        return [name for network in networks for name in ports.get(network.interface, ()) if name not in keep]

    def remove_links(self, names: Sequence[str]) -> None:
        with self._host() as ipr:
            for name in names:
                netlink.delete_link(ipr, name)
