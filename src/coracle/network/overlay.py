"""Overlay networks on this host: what the network manager delegates to for driver "overlay".

Three jobs, under the manager's lock:

- `create`/`remove` go to the cluster first (overlay_cluster.py: the claims
  that make names, VNIs and subnets unique), then make or drop the local
  copy: a network record in the local store (so inspect, ls, the firewall
  and start-up treat it like any other network) and the driver's kernel
  objects (drivers/overlay.py).
- addresses come from the cluster (`allocate`); each local endpoint is
  published once joined (`publish`) and unpublished when dropped (`drop`).
- the cluster watch's sink: networks created or removed elsewhere appear or
  vanish here; remote endpoints become FDB/neighbour entries and names the
  embedded resolver answers; encrypted networks get IPsec towards every other
  live host (network/overlay_encryption.py), made and dropped as hosts join
  and leave the membership; after a (re)listing, this host's own entries in
  etcd are made to match its local endpoints (re-published when the lease
  was lost, removed when the container went away while etcd was down) and
  kernel entries nobody publishes any more are removed.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any

from coracle.cluster.etcd import ClusterUnavailable
from coracle.errors import Conflict, InvalidParameter
from coracle.network.driver import OPT, Address, Endpoint, Network, NetworkRecord, NetworkSpec, Subnet, SubnetRequest
from coracle.network.drivers.overlay import OverlayDriver, device_names
from coracle.network.endpoints import EndpointTable
from coracle.network.names import NameTable
from coracle.network.networks import Networks
from coracle.network.overlay_cluster import SUFFIX, OverlayCluster, addresses, endpoint_key
from coracle.network.overlay_encryption import Encryption, unsupported_reason

__all__ = ["OverlayNetworks"]

log = logging.getLogger(__name__)


class OverlayNetworks:
    """The manager's delegate for overlay networks (see the module docstring)."""

    def __init__(self, cluster: OverlayCluster, driver: OverlayDriver, networks: Networks,
                 endpoints: EndpointTable, names: NameTable, lock: threading.RLock) -> None:
        self.cluster, self.driver, self.networks = cluster, driver, networks
        self.endpoints, self.names, self.lock = endpoints, names, lock
        self._remote: dict[str, dict[str, Any]] = {}  # etcd key -> endpoint published by another host
        self._hosts: set[str] = set()  # the other live hosts (membership), peers of encrypted networks
        self._secrets: dict[str, str] = {}  # network id -> secret of the encrypted networks here
        self.encryption = Encryption(driver.host_netns, cluster.address)
        cluster.membership.on_renewed.append(self._republish)

    def start(self) -> None:
        threading.Thread(target=self.cluster.run, args=(self,), daemon=True, name="overlay-watch").start()

    def close(self) -> None:
        self.cluster.close()
        self.cluster.membership.close()

    # ----- networks ------------------------------------------------------------------

    def create(self, spec: NetworkSpec) -> NetworkRecord:
        """Checked here, claimed in the cluster, then made locally (the other hosts follow the watch)."""
        self.driver.validate(spec)
        subnets: dict[int, tuple[Network | None, Address | None]] = {}
        for version in (4, 6) if spec.enable_ipv6 else (4,):
            cfg = spec.subnet(version) or SubnetRequest()
            if cfg.ip_range or cfg.aux_addresses:
                raise InvalidParameter("overlay networks take --subnet and --gateway only")
            with self.lock:
                if self.networks.find(spec.name) is not None:
                    raise Conflict(f"network with name {spec.name} already exists")
                chosen = self.networks.subnet(cfg, version, exclusive=True) if cfg.subnet else None
            # given: checked against this host's networks here, claimed cluster-wide there; else picked there
            subnets[version] = (chosen.network, chosen.gateway) if chosen else (None, None)
        wanted_mtu = spec.options.get(OPT + "driver.mtu")
        mtu = self.driver.mtu(int(wanted_mtu) if wanted_mtu else None)
        crec = self.cluster.create_network(spec.name, subnets, spec.internal, spec.attachable,
                                           dict(spec.options), dict(spec.labels), mtu)
        with self.lock:
            return self.materialize(crec)

    def remove(self, rec: NetworkRecord) -> None:
        """Everywhere: the cluster refuses while any host has an endpoint; then the local copy."""
        self.cluster.remove_network(rec.id)
        with self.lock:
            self.unmaterialize(rec)

    def materialize(self, crec: dict[str, Any]) -> NetworkRecord:
        """The local copy of a cluster network: record, VXLAN device, gateway link, firewall rules (and IPsec).

        An encrypted network is never carried in clear: on a host whose kernel cannot encrypt, its copy is
        not made (its containers cannot join it there)."""
        if crec.get("Secret") and (reason := unsupported_reason()):
            raise InvalidParameter(reason)
        known = self.networks.find(crec["Id"])
        if known is not None:
            self._encrypt(known, crec.get("Secret"))
            return known
        record = NetworkRecord(
            id=crec["Id"], name=crec["Name"], driver=self.driver.name, created=crec["Created"],
            subnets=tuple(Subnet(ipaddress.ip_network(crec["Subnet" + suffix]),
                                 ipaddress.ip_address(crec["Gateway" + suffix]))
                          for suffix in SUFFIX.values() if crec.get("Subnet" + suffix)),
            enable_ipv6=bool(crec.get("Subnet6")), internal=bool(crec["Internal"]),
            attachable=bool(crec["Attachable"]), scope=self.driver.scope,
            interface=device_names(crec["Id"])[0], mtu=int(crec["MTU"]), masquerade=not crec["Internal"],
            options=crec.get("Options") or {}, labels=crec.get("Labels") or {},
            driver_state={"VNI": int(crec["VNI"])})
        made = self.driver.create(record)
        try:
            self._encrypt(made, crec.get("Secret"))
            self.networks.save(made)
        except BaseException:
            self._decrypt(made)
            self.driver.delete(made)
            raise
        return made

    def _encrypt(self, rec: NetworkRecord, secret: str | None) -> None:
        if secret:
            self._secrets[rec.id] = secret
            self.encryption.sync(int(rec.driver_state["VNI"]), secret, self._hosts)

    def _decrypt(self, rec: NetworkRecord) -> None:
        if self._secrets.pop(rec.id, None) is not None or "encrypted" in rec.options:
            self.encryption.remove(int(rec.driver_state["VNI"]))

    def unmaterialize(self, rec: NetworkRecord) -> None:
        """The local copy gone (already gone is fine: the watch may have been first)."""
        if self.networks.find(rec.id) is None:
            return
        for key in [k for k, ep in self._remote.items() if ep["NetworkID"] == rec.id]:
            self.names.remove(self._remote.pop(key))
        self._decrypt(rec)
        self.networks.remove(rec.id)

    # ----- endpoints -------------------------------------------------------------------

    def allocate(self, rec: NetworkRecord, sub: Subnet, container_id: str, wanted: Address | None) -> Address:
        """An address of `sub` (the network's IPv4 or IPv6 subnet), unique in the whole cluster."""
        try:
            return self.cluster.allocate({"Id": rec.id, "Name": rec.name, **sub.document()}, container_id, wanted)
        except ClusterUnavailable as exc:
            raise ClusterUnavailable(f"cannot join overlay network {rec.name}: {exc}") from None

    def release(self, rec: NetworkRecord, address: str, holder: str) -> None:
        self._quietly(lambda: self.cluster.release(rec.id, address, holder))

    def publish(self, rec: NetworkRecord, ep: Endpoint) -> None:
        """Tell every host where the endpoint is (after its interface exists)."""
        try:
            self.cluster.publish(ep.body())
        except ClusterUnavailable as exc:
            raise ClusterUnavailable(f"cannot join overlay network {rec.name}: {exc}") from None

    def drop(self, ep: Endpoint) -> None:
        """An endpoint going away: unpublished and its address released (reconciled later if etcd is down)."""
        self._quietly(lambda: self._unpublish(ep.body()))

    def _unpublish(self, body: dict[str, Any]) -> None:
        self.cluster.unpublish(body["NetworkID"], body["EndpointID"])
        for address in addresses(body):
            self.cluster.release(body["NetworkID"], address, body["Container"])

    @staticmethod
    def _quietly(step: Callable[[], None]) -> None:
        try:
            step()
        except ClusterUnavailable as exc:
            log.warning("left in the cluster store until it is back (then reconciled): %s", exc)

    # ----- the watch's sink ---------------------------------------------------------------

    def overlay_sync(self, networks: list[dict[str, Any]], endpoints: list[dict[str, Any]], hosts: set[str]) -> None:
        with self.lock:
            self._hosts = hosts - {self.cluster.address}
            wanted = {n["Id"] for n in networks}
            for crec in networks:
                self._guard(lambda crec=crec: self.materialize(crec))  # type: ignore[misc]
            for rec in self._records():
                if rec.id not in wanted and not self.endpoints.of(network=rec.id):
                    self._guard(lambda rec=rec: self.unmaterialize(rec))  # type: ignore[misc]
            remote = {endpoint_key(e["NetworkID"], e["EndpointID"]): e for e in endpoints
                      if e.get("Host") != self.cluster.address}
            for key in [k for k in self._remote if k not in remote]:
                self._forget(key)
            for key, ep in remote.items():
                self._learn(key, ep)
            known = {(e["NetworkID"], ip): e["MacAddress"] for e in remote.values() for ip in addresses(e)}
            for rec in self._records():
                for ip, mac in self.driver.remotes(rec).items():
                    if known.get((rec.id, ip)) != mac:
                        self.driver.forget(rec, mac, [ip])
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
            self._unpublish(published[key])

    def _republish(self) -> None:
        """A new lease: everything bound to the old one is gone, and what others changed meanwhile may have
        been missed: the full listing again (the sync publishes this host's endpoints again, learns the
        others' and forgets those gone)."""
        self.cluster.resync(self)

    def _records(self) -> list[NetworkRecord]:
        return [r for r in self.networks.all() if r.driver == self.driver.name]

    def _local_endpoints(self) -> list[dict[str, Any]]:
        return [ep.body() for rec in self._records() for ep in self.endpoints.of(network=rec.id)]

    def overlay_network(self, network: dict[str, Any] | None, network_id: str) -> None:
        with self.lock:
            if network is not None:
                self._guard(lambda: self.materialize(network))
                return
            rec = self.networks.find(network_id)
            if rec is not None and not self.endpoints.of(network=network_id):
                self._guard(lambda: self.unmaterialize(rec))

    def overlay_host(self, address: str, alive: bool) -> None:
        """A host joined or left the membership: the encrypted networks' IPsec follows."""
        with self.lock:
            if address == self.cluster.address or (address in self._hosts) == alive:
                return
            self._hosts = self._hosts | {address} if alive else self._hosts - {address}
            for rec in self._records():
                if rec.id in self._secrets:
                    self._guard(lambda rec=rec: self._encrypt(rec, self._secrets[rec.id]))  # type: ignore[misc]

    def overlay_endpoint(self, endpoint: dict[str, Any] | None, key: str) -> None:
        with self.lock:
            if endpoint is None:
                self._forget(key)
            elif endpoint.get("Host") != self.cluster.address:
                self._learn(key, endpoint)

    def _learn(self, key: str, ep: dict[str, Any]) -> None:
        rec = self.networks.find(ep["NetworkID"])
        old = self._remote.get(key)
        if rec is None or old == ep:
            return
        if old is not None:
            self._forget(key)
        self._guard(lambda: self.driver.learn(rec, ep["MacAddress"], addresses(ep), ep["Host"]))
        self._remote[key] = ep
        self.names.add(ep)

    def _forget(self, key: str) -> None:
        ep = self._remote.pop(key, None)
        if ep is None:
            return
        self.names.remove(ep)
        rec = self.networks.find(ep["NetworkID"])
        if rec is not None:
            self._guard(lambda: self.driver.forget(rec, ep["MacAddress"], addresses(ep)))

    @staticmethod
    def _guard(step: Callable[[], object]) -> None:
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
        found = [] if self.cluster.connected.is_set() else ["cluster store unreachable: overlay changes wait for it"]
        with self.lock:
            for rec in self._records():
                found += self.driver.restore(rec, (), dry_run)
                kernel = self.driver.remotes(rec)
                for ep in [e for e in self._remote.values() if e["NetworkID"] == rec.id]:
                    if any(kernel.get(ip) != ep["MacAddress"] for ip in addresses(ep)):
                        found.append(f"{rec.name}: entries of {ep['ContainerName']} ({ep['IPAddress']}) on "
                                     f"{ep['Host']}")
                        if not dry_run:
                            self.driver.learn(rec, ep["MacAddress"], addresses(ep), ep["Host"])
        return found
