"""Overlay networks on this host: what the network manager delegates to for driver "overlay".

Three jobs, all under the manager's lock:

- `create`/`remove` go to the cluster first (overlay_cluster.py: the claims
  that make names, VNIs and subnets unique), then make or drop the local
  copy: a network record in the local store (so inspect, ls, the firewall
  and start-up treat it like any other bridge-backed network) and the kernel
  objects of the driver (drivers/overlay.py).
- addresses come from the cluster (`allocate`); each local endpoint is
  published once wired (`published`) and unpublished when dropped.
- the cluster watch's sink: networks created or removed elsewhere appear or
  vanish here; remote endpoints become FDB/neighbour entries and names the
  embedded resolver answers; after a (re)listing, this host's own entries in
  etcd are made to match its local endpoints (re-published when the lease
  was lost, removed when the container went away while etcd was down) and
  kernel entries nobody publishes any more are removed.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from coracle.cluster.etcd import ClusterUnavailable
from coracle.errors import InvalidParameter
from coracle.network.driver import NetworkRecord, NetworkSpec, Subnet
from coracle.network.drivers.overlay import OverlayDriver
from coracle.network.ipam import parse_address, parse_subnet
from coracle.network.overlay_cluster import OverlayCluster, endpoint_key

if TYPE_CHECKING:
    from coracle.network.manager import NetworkManager

log = logging.getLogger(__name__)

KIND = "network"
DRIVER = "overlay"


class OverlayNetworks:
    """The manager's delegate for overlay networks (see the module docstring)."""

    def __init__(self, manager: NetworkManager, cluster: OverlayCluster) -> None:
        self.manager = manager
        self.cluster = cluster
        self.driver = OverlayDriver(manager.host_netns, cluster.address)
        self._remote: dict[str, dict[str, Any]] = {}  # etcd key -> endpoint published by another host
        self._thread: threading.Thread | None = None
        cluster.membership.on_renewed.append(self._republish)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.cluster.run, args=(self,), daemon=True, name="overlay-watch")
        self._thread.start()

    def close(self) -> None:
        self.cluster.close()
        self.cluster.membership.close()

    # ----- networks ------------------------------------------------------------------

    def create(self, name: str, ipam: dict[str, Any], internal: bool, attachable: bool, options: dict[str, str],
               labels: dict[str, str]) -> str:
        configs = ipam.get("Config") or []
        if len(configs) > 1:
            raise InvalidParameter("overlay networks take one IPv4 subnet")
        cfg = configs[0] if configs else {}
        self.driver.validate(NetworkSpec(name, DRIVER, options=options))
        subnet = parse_subnet(cfg["Subnet"]) if cfg.get("Subnet") else None
        if subnet is not None:
            self.manager.check_overlay_subnet(subnet)
        elif cfg.get("Gateway"):
            raise InvalidParameter("a gateway needs a subnet")
        gateway = parse_address(cfg["Gateway"], "gateway") if cfg.get("Gateway") else None
        wanted_mtu = options.get("com.docker.network.driver.mtu")
        mtu = self.driver.mtu(int(wanted_mtu) if wanted_mtu else None)
        crec = self.cluster.create_network(name, subnet, gateway, internal, attachable, options, labels, mtu)  # type: ignore[arg-type]
        self.materialize(crec)
        return str(crec["Id"])

    def remove(self, rec: dict[str, Any]) -> None:
        """Everywhere: the cluster refuses while any host has an endpoint; then the local copy."""
        self.cluster.remove_network(rec["Id"])
        self.unmaterialize(rec)

    def materialize(self, crec: dict[str, Any]) -> None:
        """The local copy of a cluster network: record, firewall rules, bridge and VXLAN device."""
        m = self.manager
        if m.store.get(KIND, crec["Id"]) is not None:
            return
        record = NetworkRecord(
            id=crec["Id"], name=crec["Name"], driver=DRIVER, created=crec["Created"],
            subnets=(Subnet(ipaddress.ip_network(crec["Subnet"]), ipaddress.ip_address(crec["Gateway"])),),
            internal=bool(crec["Internal"]), attachable=bool(crec["Attachable"]), scope="global",
            mtu=int(crec["MTU"]), masquerade=not crec["Internal"], options=crec.get("Options") or {},
            labels=crec.get("Labels") or {}, ipam_options={}, driver_state={"VNI": int(crec["VNI"])})
        record = self.driver.create(record)
        doc = record.document()
        try:
            m.firewall.add_network(m.rules(doc))
            m.store.put(KIND, doc["Id"], doc)
        except BaseException:
            m.firewall.remove_network(m.rules(doc))
            self.driver.delete(record)
            raise

    def unmaterialize(self, rec: dict[str, Any]) -> None:
        m = self.manager
        for key in [k for k, ep in self._remote.items() if ep["NetworkID"] == rec["Id"]]:
            m.names.remove(self._remote.pop(key))
        m.firewall.remove_network(m.rules(rec))
        self.driver.delete(NetworkRecord.from_document(rec))
        m.store.delete(KIND, rec["Id"])

    def restore(self, rec: dict[str, Any]) -> None:
        """Start-up: the kernel objects of a known network, as they were."""
        self.driver.create(NetworkRecord.from_document(rec))

    # ----- endpoints -------------------------------------------------------------------

    def allocate(self, rec: dict[str, Any], container_id: str, wanted: IPv4Address | None) -> IPv4Address:
        try:
            return self.cluster.allocate({"Id": rec["Id"], "Name": rec["Name"], **Subnet.from_document(
                rec["IPAM"]["Config"][0]).document()}, container_id, wanted)
        except ClusterUnavailable as exc:
            raise ClusterUnavailable(f"cannot join overlay network {rec['Name']}: {exc}") from None

    def wire(self, rec: dict[str, Any], ep: dict[str, Any], ns_path: str) -> dict[str, Any]:
        """The endpoint's veth (through the driver), then its publication to every host."""
        from coracle.network.driver import Endpoint

        joined = self.driver.join(NetworkRecord.from_document(rec), Endpoint.from_body(ep), ns_path)
        ep.update(Veth=joined.host_interface, Interface=joined.interface)
        try:
            self.cluster.publish(ep)
        except ClusterUnavailable as exc:
            raise ClusterUnavailable(f"cannot join overlay network {rec['Name']}: {exc}") from None
        return ep

    def drop(self, ep: dict[str, Any]) -> None:
        """An endpoint going away: unpublished and its address released (reconciled later if etcd is down)."""
        try:
            self.cluster.unpublish(ep["NetworkID"], ep["EndpointID"])
            if ep.get("IPAddress"):
                self.cluster.release(ep["NetworkID"], ep["IPAddress"])
        except ClusterUnavailable as exc:
            log.warning("endpoint %s stays in the cluster store until it is back: %s", ep["EndpointID"][:12], exc)

    # ----- the watch's sink ---------------------------------------------------------------

    def overlay_sync(self, networks: list[dict[str, Any]], endpoints: list[dict[str, Any]]) -> None:
        m = self.manager
        with m.lock:
            wanted = {n["Id"]: n for n in networks}
            for crec in networks:
                self._guard(lambda crec=crec: self.materialize(crec))  # type: ignore[misc]
            for rec in m.overlay_records():
                if rec["Id"] not in wanted and not m.endpoints_of(network=rec["Id"]):
                    self._guard(lambda rec=rec: self.unmaterialize(rec))  # type: ignore[misc]
            remote = {endpoint_key(e["NetworkID"], e["EndpointID"]): e for e in endpoints
                      if e.get("Host") != self.cluster.address}
            for key in [k for k in self._remote if k not in remote]:
                self._forget(key)
            for key, ep in remote.items():
                self._learn(key, ep)
            known = {(e["NetworkID"], e["IPAddress"]): e["MacAddress"] for e in remote.values()}
            for rec in m.overlay_records():
                record = NetworkRecord.from_document(rec)
                for ip, mac in self.driver.remotes(record).items():
                    if known.get((rec["Id"], ip)) != mac:
                        self.driver.forget(record, mac, ip)
            mine = {endpoint_key(e["NetworkID"], e["EndpointID"]): e for e in endpoints
                    if e.get("Host") == self.cluster.address}
            self._reconcile_own(mine)

    def _reconcile_own(self, published: dict[str, dict[str, Any]]) -> None:
        """This host's entries in etcd made to match its endpoints: missing ones published again (the lease
        was lost), those of containers gone while etcd was away removed with their address claims."""
        local = {endpoint_key(ep["NetworkID"], ep["EndpointID"]): ep for ep in self._local_endpoints()}
        missing = [ep for key, ep in local.items() if key not in published]
        if missing:
            self.cluster.republish(missing)
        for key in set(published) - set(local):
            self.drop(published[key])

    def _republish(self) -> None:
        """A new lease: everything bound to the old one is gone; publish this host's endpoints again."""
        with self.manager.lock:
            self.cluster.republish(self._local_endpoints())

    def _local_endpoints(self) -> list[dict[str, Any]]:
        ids = {r["Id"] for r in self.manager.overlay_records()}
        return [ep for ep in self.manager.endpoints_of() if ep["NetworkID"] in ids]

    def overlay_network(self, network: dict[str, Any] | None, network_id: str) -> None:
        m = self.manager
        with m.lock:
            if network is not None:
                self._guard(lambda: self.materialize(network))
                return
            rec = m.store.get(KIND, network_id)
            if rec is not None and not m.endpoints_of(network=network_id):
                self._guard(lambda: self.unmaterialize(rec))

    def overlay_endpoint(self, endpoint: dict[str, Any] | None, key: str) -> None:
        with self.manager.lock:
            if endpoint is None:
                self._forget(key)
            elif endpoint.get("Host") != self.cluster.address:
                self._learn(key, endpoint)

    def _learn(self, key: str, ep: dict[str, Any]) -> None:
        rec = self.manager.store.get(KIND, ep["NetworkID"])
        if rec is None:
            return
        old = self._remote.get(key)
        if old == ep:
            return
        if old is not None:
            self._forget(key)
        self._guard(lambda: self.driver.learn(NetworkRecord.from_document(rec), ep["MacAddress"], ep["IPAddress"],
                                              ep["Host"]))
        self._remote[key] = ep
        self.manager.names.add(ep)

    def _forget(self, key: str) -> None:
        ep = self._remote.pop(key, None)
        if ep is None:
            return
        self.manager.names.remove(ep)
        rec = self.manager.store.get(KIND, ep["NetworkID"])
        if rec is not None:
            self._guard(lambda: self.driver.forget(NetworkRecord.from_document(rec), ep["MacAddress"],
                                                   ep["IPAddress"]))

    @staticmethod
    def _guard(step: Callable[[], None]) -> None:
        """One change from the watch: a failure is logged, the watch goes on (the next listing retries)."""
        try:
            step()
        except ClusterUnavailable:
            raise
        except Exception:
            log.exception("overlay change not applied")

    # ----- system check -------------------------------------------------------------------

    def check(self, dry_run: bool) -> list[str]:
        """`system check`: the cluster store unreachable (reported only), overlay devices and remote
        containers' kernel entries missing (re-made unless dry_run)."""
        m = self.manager
        found = [] if self.cluster.connected.is_set() else ["cluster store unreachable: overlay changes wait for it"]
        with m.lock:
            for rec in m.overlay_records():
                record = NetworkRecord.from_document(rec)
                found += self.driver.restore(record, [], dry_run)
                kernel = self.driver.remotes(record)
                for ep in [e for e in self._remote.values() if e["NetworkID"] == rec["Id"]]:
                    if kernel.get(ep["IPAddress"]) != ep["MacAddress"]:
                        found.append(f"{rec['Name']}: entries of {ep['ContainerName']} ({ep['IPAddress']}) on "
                                     f"{ep['Host']}")
                        if not dry_run:
                            self.driver.learn(record, ep["MacAddress"], ep["IPAddress"], ep["Host"])
        return found
