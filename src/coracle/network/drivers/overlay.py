"""The overlay driver: the kernel objects of a multi-host network on one host.

Per network and host: a VXLAN device (network/vxlan.py), a macvlan link of it
in bridge mode holding the network's gateway address (the same on every host:
each host is its containers' local way out, NATed and firewalled like any
bridge network, and `-p` publishes on the host running the container), and one
macvlan link of it per local endpoint, made inside the container. A frame to a
container on another host goes from the container's link straight into the
VXLAN device: no veth, bridge or host IP pass on the way, which is what the
overlay's throughput is made of (docs/performance.md). The gateway device and
its firewall rules are the bridge driver's (`BridgeDriver.create` with another
device), the endpoint links the macvlan driver's (its join on the VXLAN
device): composed, not copied. This driver adds the VXLAN device and programs
remote containers (`learn`/`forget`, from the cluster watch). What is shared
between hosts (ids, VNIs, subnets, addresses, endpoint locations) is in
network/overlay_cluster.py; this module only touches the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pyroute2 import IPRoute

from coracle.errors import InvalidParameter
from coracle.network import netlink, rtnl, vxlan
from coracle.network.overlay_encryption import unsupported_reason
from coracle.network.driver import OPT, Endpoint, NetworkRecord, NetworkSpec
from coracle.network.drivers.bridge import BridgeDriver
from coracle.network.drivers.macvlan import MacvlanDriver

__all__ = ["OverlayDriver", "device_names"]

OPTIONS = (OPT + "driver.mtu", "encrypted")


def device_names(network_id: str) -> tuple[str, str]:
    """(gateway, vxlan) device names of a network: the same on every host."""
    return f"ov-{network_id[:12]}", f"vx-{network_id[:12]}"


class OverlayDriver:
    """VXLAN device + macvlan links per network (gateway through the bridge driver, endpoints through
    the macvlan driver); static FDB/neighbour entries per remote endpoint."""

    name = "overlay"
    scope = "global"
    exclusive_subnet = True  # routed through our gateway link on every host

    def __init__(self, bridge: BridgeDriver, links: MacvlanDriver, advertise: str) -> None:
        self.bridge = bridge
        self.links = links
        self.host_netns = bridge.host_netns
        self.advertise = advertise

    def validate(self, spec: NetworkSpec) -> None:
        unknown = [k for k in spec.options if k not in OPTIONS]
        if unknown:
            raise InvalidParameter(f"overlay driver: unknown option {unknown[0]!r}")
        if "encrypted" in spec.options and (reason := unsupported_reason()):
            raise InvalidParameter(reason)

    def mtu(self, wanted: int | None) -> int:
        """The endpoints' MTU: the underlay's minus the VXLAN overhead, or less if asked."""
        with netlink.netns_socket(self.host_netns) as ipr:
            ceiling = vxlan.underlay_mtu(ipr, self.advertise) - vxlan.OVERHEAD
        if wanted is not None and wanted > ceiling:
            raise InvalidParameter(f"invalid MTU {wanted}: the overlay carries at most {ceiling} over this underlay")
        return wanted or ceiling

    def create(self, network: NetworkRecord) -> NetworkRecord:
        try:
            self._plumb(network)
        except BaseException:
            self.delete(network)
            raise
        return network

    def _plumb(self, network: NetworkRecord) -> None:
        """The VXLAN device, then the gateway link on it with the network's firewall rules."""
        self._vxlan(network)
        self.bridge.create(network, make_device=self._gateway)

    def _vxlan(self, network: NetworkRecord) -> None:
        with netlink.netns_socket(self.host_netns) as ipr:
            vxlan.ensure_device(ipr, device_names(network.id)[1], int(network.driver_state["VNI"]), self.advertise,
                                network.mtu)

    @staticmethod
    def _gateway(ipr: IPRoute, network: NetworkRecord) -> None:
        vxlan.make_gateway(ipr, network.interface, device_names(network.id)[1], network.mtu)

    def delete(self, network: NetworkRecord) -> None:
        self.bridge.delete(network)
        with netlink.netns_socket(self.host_netns) as ipr:
            netlink.delete_link(ipr, device_names(network.id)[1])

    def _on_device(self, network: NetworkRecord) -> NetworkRecord:
        """The network as the macvlan driver sees it: bridge-mode links on the VXLAN device."""
        return replace(network, interface=device_names(network.id)[1], options={"macvlan_mode": "bridge"},
                       driver_state={})

    def join(self, network: NetworkRecord, endpoint: Endpoint, netns: str) -> Endpoint:
        return self.links.join(self._on_device(network), endpoint, netns)

    def leave(self, network: NetworkRecord, endpoint: Endpoint) -> None:
        self.links.leave(self._on_device(network), endpoint)

    def restore(self, network: NetworkRecord, endpoints: Sequence[tuple[Endpoint, str]],
                dry_run: bool = False) -> list[str]:
        """The VXLAN device and gateway link (made again unless dry_run), then the endpoints' links that
        are missing from their namespaces (all of them, when the VXLAN device was gone: its links go with it).

        A network made by an earlier coracle had a bridge for its gateway and a veth pair per endpoint.
        The bridge and those veths go (each container's end with its host end), so that the endpoints'
        links are made again as macvlans, with the same names, MACs and addresses. The daemon's start
        does that for every running container (its check re-makes missing links)."""
        vx = device_names(network.id)[1]
        with netlink.netns_socket(self.host_netns) as ipr:
            found = [f"{what} of {network.name}" for what, name in
                     (("VXLAN device", vx), ("gateway link", network.interface)) if netlink.index(ipr, name) is None]
            earlier = netlink.kind_of(ipr, network.interface) == "bridge"
            if earlier:
                found.append(f"bridge {network.interface} of {network.name} (an earlier layout): "
                             "replaced by macvlan links")
                if not dry_run:
                    with rtnl.conversation(self.host_netns) as host:
                        ports = host.ports().get(network.interface, [])
                    for name in [p for p in ports if p != vx]:
                        netlink.delete_link(ipr, name)
                    netlink.delete_link(ipr, network.interface)
        if not dry_run:
            self._vxlan(network)
            self.bridge.plumb(network, make_device=self._gateway)
        return found + self.links.restore(self._on_device(network), endpoints, dry_run)

    # ----- remote endpoints (from the cluster watch) ------------------------------------

    def learn(self, network: NetworkRecord, mac: str, ips: Sequence[str], host: str) -> None:
        with netlink.netns_socket(self.host_netns) as ipr:
            vxlan.add_remote(ipr, device_names(network.id)[1], mac, ips, host)

    def forget(self, network: NetworkRecord, mac: str, ips: Sequence[str]) -> None:
        with netlink.netns_socket(self.host_netns) as ipr:
            vxlan.remove_remote(ipr, device_names(network.id)[1], mac, ips)

    def remotes(self, network: NetworkRecord) -> dict[str, str]:
        """{ip: mac} of the remote endpoints the kernel knows on this network (IPv4 and IPv6)."""
        with netlink.netns_socket(self.host_netns) as ipr:
            return vxlan.remotes(ipr, device_names(network.id)[1])
