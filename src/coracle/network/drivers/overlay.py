"""The overlay driver: the kernel objects of a multi-host network on one host.

Per network and host: a Linux bridge holding the network's gateway address
(the same on every host: each host is its containers' local way out, NATed
and firewalled like any bridge network, and `-p` publishes on the host
running the container) and a VXLAN device on that bridge (network/vxlan.py).
The bridge, its firewall rules and the endpoints' veths are the bridge
driver's own (composed, not copied); this driver adds the VXLAN device and
programs remote containers (`learn`/`forget`, from the cluster watch). What
is shared between hosts (ids, VNIs, subnets, addresses, endpoint locations)
is in network/overlay_cluster.py; this module only touches the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from coracle.errors import InvalidParameter
from coracle.network import netlink, vxlan
from coracle.network.overlay_encryption import unsupported_reason
from coracle.network.driver import OPT, Endpoint, NetworkRecord, NetworkSpec
from coracle.network.drivers.bridge import BridgeDriver

__all__ = ["OverlayDriver", "device_names"]

OPTIONS = (OPT + "driver.mtu", "encrypted")


def device_names(network_id: str) -> tuple[str, str]:
    """(bridge, vxlan) device names of a network: the same on every host."""
    return f"ov-{network_id[:12]}", f"vx-{network_id[:12]}"


class OverlayDriver:
    """Bridge (through the bridge driver) + VXLAN device per network; static FDB/neighbour entries per
    remote endpoint."""

    name = "overlay"
    scope = "global"
    exclusive_subnet = True  # routed through our bridge on every host

    def __init__(self, bridge: BridgeDriver, advertise: str) -> None:
        self.bridge = bridge
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
        self.bridge.create(network)
        try:
            self._vxlan(network)
        except BaseException:
            self.delete(network)
            raise
        return network

    def _vxlan(self, network: NetworkRecord) -> None:
        with netlink.netns_socket(self.host_netns) as ipr:
            vxlan.ensure_device(ipr, device_names(network.id)[1], int(network.driver_state["VNI"]), self.advertise,
                                network.interface, network.mtu + vxlan.OVERHEAD)

    def delete(self, network: NetworkRecord) -> None:
        with netlink.netns_socket(self.host_netns) as ipr:
            netlink.delete_link(ipr, device_names(network.id)[1])
        self.bridge.delete(network)

    def join(self, network: NetworkRecord, endpoint: Endpoint, netns: str) -> Endpoint:
        return self.bridge.join(network, endpoint, netns)

    def leave(self, network: NetworkRecord, endpoint: Endpoint) -> None:
        self.bridge.leave(network, endpoint)

    def restore(self, network: NetworkRecord, endpoints: Sequence[tuple[Endpoint, str]],
                dry_run: bool = False) -> list[str]:
        """The bridge driver's restore, and the VXLAN device (re-made unless dry_run)."""
        with netlink.netns_socket(self.host_netns) as ipr:
            missing = netlink.index(ipr, device_names(network.id)[1]) is None
        found = [f"VXLAN device of {network.name}"] if missing else []
        found += self.bridge.restore(network, endpoints, dry_run)
        if not dry_run:
            self._vxlan(network)
        return found

    def leftovers(self, network: NetworkRecord, keep: set[str]) -> Iterator[str]:
        """Ports of the network's bridge that no endpoint owns (its VXLAN device is the network's)."""
        vx = device_names(network.id)[1]
        return (name for name in self.bridge.leftovers(network, keep) if name != vx)

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
