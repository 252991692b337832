"""The overlay driver: the kernel objects of a multi-host network on one host.

Per network and host: a Linux bridge holding the network's gateway address
(the same on every host: each host is its containers' local way out, NATed
like any bridge network, and `-p` publishes on the host running the
container) and a VXLAN device on that bridge (network/vxlan.py). Containers
join with a veth pair on the bridge, their MTU lowered by the VXLAN overhead.
Remote containers are programmed with `learn`/`forget`, from the cluster
watch. What is shared between hosts (ids, VNIs, subnets, addresses, endpoint
locations) is in network/overlay.py; this module only touches the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from coracle.network import bridge, vxlan
from coracle.network.driver import Endpoint, NetworkRecord, NetworkSpec
from coracle.network.bridge import netns_socket
from coracle.errors import InvalidParameter

OPTIONS = ("com.docker.network.driver.mtu",)


def device_names(network_id: str) -> tuple[str, str]:
    """(bridge, vxlan) device names of a network: the same on every host."""
    return f"ov-{network_id[:12]}", f"vx-{network_id[:12]}"


class OverlayDriver:
    """Bridge + VXLAN per network, veth per endpoint, static FDB/neighbour entries per remote endpoint."""

    name = "overlay"
    scope = "global"

    def __init__(self, host_netns: str, advertise: str) -> None:
        self.host_netns = host_netns
        self.advertise = advertise

    def validate(self, spec: NetworkSpec) -> None:
        unknown = [k for k in spec.options if k not in OPTIONS]
        if unknown:
            raise InvalidParameter(f"overlay driver: unknown option {unknown[0]!r}")
        if spec.enable_ipv6:
            raise InvalidParameter("overlay networks are IPv4 only")

    def mtu(self, wanted: int | None) -> int:
        """The endpoints' MTU: the underlay's minus the VXLAN overhead, or less if asked."""
        with netns_socket(self.host_netns) as ipr:
            ceiling = vxlan.underlay_mtu(ipr, self.advertise) - vxlan.OVERHEAD
        if wanted is not None and wanted > ceiling:
            raise InvalidParameter(f"invalid MTU {wanted}: the overlay carries at most {ceiling} over this underlay")
        return wanted or ceiling

    def create(self, network: NetworkRecord) -> NetworkRecord:
        br, vx = device_names(network.id)
        sub = network.subnet4
        try:
            with netns_socket(self.host_netns) as ipr:
                bridge.ensure_bridge(ipr, br, str(sub.gateway), sub.network.prefixlen, network.mtu)
                vxlan.ensure_device(ipr, vx, int(network.driver_state["VNI"]), self.advertise, br,
                                    network.mtu + vxlan.OVERHEAD)
                bridge.link_up(ipr, br)
        except BaseException:
            self.delete(network)
            raise
        return replace(network, interface=br, driver_state={**network.driver_state, "VXLAN": vx})

    def delete(self, network: NetworkRecord) -> None:
        with netns_socket(self.host_netns) as ipr:
            for dev in device_names(network.id):
                bridge.delete_link(ipr, dev)

    def join(self, network: NetworkRecord, endpoint: Endpoint, netns: str) -> Endpoint:
        sub = network.subnet4
        veth = "veth" + endpoint.id[:11]
        with netns_socket(netns) as cipr:
            ifname = endpoint.interface
            if not ifname or bridge.index(cipr, ifname) is not None:
                ifname = bridge.free_ifname(cipr)
            with netns_socket(self.host_netns) as ipr:
                bridge.add_veth(ipr, veth, device_names(network.id)[0], netns, ifname, endpoint.mac_address,
                                network.mtu, isolated=False)
            try:
                bridge.configure_peer(cipr, ifname, endpoint.ipv4, sub.network.prefixlen, endpoint.gateway or None)
            except BaseException:
                with netns_socket(self.host_netns) as ipr:
                    bridge.delete_link(ipr, veth)
                raise
        return replace(endpoint, interface=ifname, host_interface=veth)

    def leave(self, network: NetworkRecord, endpoint: Endpoint) -> None:
        if endpoint.host_interface:
            with netns_socket(self.host_netns) as ipr:
                bridge.delete_link(ipr, endpoint.host_interface)

    def restore(self, network: NetworkRecord, endpoints: Sequence[tuple[Endpoint, str]],
                dry_run: bool = False) -> list[str]:
        changed = []
        br, vx = device_names(network.id)
        with netns_socket(self.host_netns) as ipr:
            missing = [d for d in (br, vx) if bridge.index(ipr, d) is None]
            gone = [(ep, ns) for ep, ns in endpoints if ep.host_interface and bridge.index(ipr, ep.host_interface)
                    is None]
        changed += [f"overlay device {d} of {network.name}" for d in missing]
        changed += [f"veth {ep.host_interface} on {network.name} ({ep.ipv4})" for ep, _ in gone]
        if not dry_run:
            if missing:
                self.create(network)
            for ep, ns in gone:
                self.join(network, ep, ns)
        return changed

    # ----- remote endpoints (from the cluster watch) ------------------------------------

    def learn(self, network: NetworkRecord, mac: str, ip: str, host: str) -> None:
        with netns_socket(self.host_netns) as ipr:
            vxlan.add_remote(ipr, device_names(network.id)[1], mac, ip, host)

    def forget(self, network: NetworkRecord, mac: str, ip: str) -> None:
        with netns_socket(self.host_netns) as ipr:
            vxlan.remove_remote(ipr, device_names(network.id)[1], mac, ip)

    def remotes(self, network: NetworkRecord) -> dict[str, str]:
        """{ip: mac} of the remote endpoints the kernel knows on this network."""
        with netns_socket(self.host_netns) as ipr:
            return vxlan.remotes(ipr, device_names(network.id)[1])
