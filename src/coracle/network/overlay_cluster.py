"""Overlay networks' cluster state in etcd: networks, VNIs, subnets, addresses, endpoints; and the watch.

Keys (all under /coracle/; values JSON):

    networks/<id>              the network record (name, subnet, gateway, VNI, internal, attachable...;
                               Subnet6/Gateway6 too when dual-stack)
    names/<name>               -> id    } claims: created with a transaction comparing
    vnis/<vni>                 -> id    } create_revision == 0, so two hosts creating at
    subnets/<cidr>             -> id    } once never get the same name, VNI or subnet
    addresses/<id>/<ip>        -> container id, bound to the owner's lease (same claim)
    endpoints/<id>/<endpoint>  where a container is (IP, MAC, names, host), bound to the owner's lease
    nodes/<address>            one per live daemon, bound to its lease (cluster/membership.py)

An encrypted network's record also holds its secret ("Secret": what its
IPsec keys are derived from, network/overlay_encryption.py): anyone who can
read the store can read it, so run etcd over TLS with client certificates.

Keys bound to a lease vanish when their host stops refreshing it, so a dead
host's endpoints and addresses go away by themselves and every other host
sees the deletions in its watch. `OverlayCluster.run` keeps one watch on the whole
prefix: it lists everything, hands the listing to the sink (which makes the
kernel and the resolver match it), then applies changes from the listed
revision on; after an interruption it watches again from the last revision
it saw, or, when etcd has compacted its history past that revision (the
changes since are gone from it), lists again at once and watches from the new
listing's revision; so does a host that had to take a new lease, before it
announces itself. Nothing is missed either way.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from coracle.cluster.etcd import ClusterUnavailable, Etcd, KeyValue, LeaseNotFound, WatchCanceled
from coracle.cluster.membership import NODES, Membership
from coracle.errors import Conflict, InvalidParameter, NotFound
from coracle.network.driver import Address, Network

log = logging.getLogger(__name__)

ROOT = "/coracle/"
NETWORKS = ROOT + "networks/"
ENDPOINTS = ROOT + "endpoints/"
VNI_FIRST, VNI_LAST = 4096, (1 << 24) - 1
# 4096 IPv4 overlay subnets, away from the bridge networks' default pools; 65536 IPv6 ones in a ULA /48
DEFAULT_POOLS = {4: ("10.240.0.0/12", 24), 6: ("fdc0:ac1e::/48", 64)}
SUFFIX = {4: "", 6: "6"}  # the record's Subnet/Gateway keys of each family: Subnet, Subnet6
T = TypeVar("T")


class Sink(Protocol):
    """What the watch keeps in step with the cluster (the network manager)."""

    def overlay_sync(self, networks: list[dict[str, Any]], endpoints: list[dict[str, Any]],
                     hosts: set[str]) -> None: ...

    def overlay_host(self, address: str, alive: bool) -> None: ...

    def overlay_network(self, network: dict[str, Any] | None, network_id: str) -> None: ...

    def overlay_endpoint(self, endpoint: dict[str, Any] | None, key: str) -> None: ...


def addresses(endpoint: dict[str, Any]) -> list[str]:
    """An endpoint's addresses as published (IPv4, and IPv6 on a dual-stack network)."""
    return [a for a in (endpoint.get("IPAddress"), endpoint.get("GlobalIPv6Address")) if a]


def endpoint_key(network_id: str, endpoint_id: str) -> str:
    return f"{ENDPOINTS}{network_id}/{endpoint_id}"


class OverlayCluster:
    """The cluster store as overlay networks see it (one per daemon)."""

    def __init__(self, etcd: Etcd, membership: Membership) -> None:
        self.etcd = etcd
        self.membership = membership
        self.address = membership.address
        self._stop = threading.Event()
        self.connected = threading.Event()  # set while the watch is live (system check reports it)
        self._synced = 0  # the revision of the last full listing: older events in the watch are stale

    # ----- networks ----------------------------------------------------------------

    def create_network(self, name: str, subnets: dict[int, tuple[Network | None, Address | None]],
                       internal: bool, attachable: bool, options: dict[str, str], labels: dict[str, str],
                       mtu: int) -> dict[str, Any]:
        """Claim the name, a VNI and a subnet per family ({4: (subnet or None to pick one, gateway or None)}, and
        6 for a dual-stack network), then publish the record; claims are undone on failure."""
        nid = secrets.token_hex(32)
        claims: list[str] = []
        try:
            if not self.etcd.create(f"{ROOT}names/{name}", nid):
                raise Conflict(f"network with name {name} already exists")
            claims.append(f"{ROOT}names/{name}")
            rec: dict[str, Any] = {"Id": nid, "Name": name, "VNI": self._claim_vni(nid, claims)}
            for version, (subnet, gateway) in sorted(subnets.items()):
                if subnet is not None:
                    if not self._claim_subnet(subnet, nid, claims):
                        raise Conflict(f"invalid pool request: Pool overlaps with other one on this address space "
                                       f"({subnet} is used by another overlay network)")
                else:
                    subnet = self._pick_subnet(version, nid, claims)
                gw = gateway or next(subnet.hosts())
                if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
                    raise InvalidParameter(f"invalid gateway {gw}: not a host address of subnet {subnet}")
                suffix = SUFFIX[version]
                rec.update({"Subnet" + suffix: str(subnet), "Gateway" + suffix: str(gw)})
            rec.update({"Internal": internal, "Attachable": attachable, "Options": options, "Labels": labels,
                        "MTU": mtu, "Created": datetime.now(UTC).isoformat().replace("+00:00", "Z")})
            if "encrypted" in options:
                rec["Secret"] = secrets.token_hex(32)
            self.etcd.put(NETWORKS + nid, json.dumps(rec))
            return rec
        except BaseException:
            for key in claims:
                try:
                    self.etcd.delete(key)
                except ClusterUnavailable:
                    log.warning("claim %s left in the cluster store (unreachable)", key)
            raise

    def _claim_vni(self, nid: str, claims: list[str]) -> int:
        taken = {int(kv.key.rsplit("/", 1)[1]) for kv in self.etcd.range(f"{ROOT}vnis/")[0]}
        for vni in range(VNI_FIRST, VNI_LAST):
            if vni not in taken and self.etcd.create(f"{ROOT}vnis/{vni}", nid):
                claims.append(f"{ROOT}vnis/{vni}")
                return vni
        raise Conflict("no VXLAN id left")

    def _claim_subnet(self, subnet: Network, nid: str, claims: list[str]) -> bool:
        """Claim a subnet unless it overlaps a claimed one (checked again after the claim: a racing
        claimant of an overlapping, different CIDR makes both back off rather than both win)."""
        def overlapping() -> list[KeyValue]:
            return [kv for kv in self.etcd.range(f"{ROOT}subnets/")[0]
                    if kv.value.decode() != nid
                    and ipaddress.ip_network(kv.key[len(ROOT + "subnets/"):].replace("_", "/")).overlaps(subnet)]

        if overlapping():
            return False
        key = f"{ROOT}subnets/{str(subnet).replace('/', '_')}"
        if not self.etcd.create(key, nid):
            return False
        claims.append(key)
        if overlapping():
            claims.remove(key)
            self.etcd.delete(key)
            return False
        return True

    def _pick_subnet(self, version: int, nid: str, claims: list[str]) -> Network:
        pool, prefixlen = DEFAULT_POOLS[version]
        for candidate in ipaddress.ip_network(pool).subnets(new_prefix=prefixlen):
            if self._claim_subnet(candidate, nid, claims):
                return candidate
        raise Conflict(f"could not find an available, non-overlapping IPv{version} address pool among the defaults "
                       "to assign to the overlay network")

    def networks(self) -> list[dict[str, Any]]:
        return [json.loads(kv.value) for kv in self.etcd.range(NETWORKS)[0]]

    def remove_network(self, nid: str) -> None:
        """Remove a network everywhere; refused while any host still has an endpoint on it."""
        kv = self.etcd.get(NETWORKS + nid)
        if kv is None:
            raise NotFound(f"network {nid} not found")
        rec = json.loads(kv.value)
        busy = self.etcd.range(f"{ENDPOINTS}{nid}/")[0]
        if busy:
            hosts = sorted({json.loads(e.value).get("Host", "?") for e in busy})
            raise Conflict(f"error while removing network: network {rec['Name']} id {nid} has active endpoints "
                           f"(on {', '.join(hosts)})")
        if not self.etcd.delete_if(NETWORKS + nid, kv.mod_revision):
            raise Conflict(f"network {rec['Name']} changed while being removed: try again")
        subnets = [f"{ROOT}subnets/{rec['Subnet' + suffix].replace('/', '_')}" for suffix in SUFFIX.values()
                   if rec.get("Subnet" + suffix)]
        for key, prefix in ((f"{ROOT}addresses/{nid}/", True), (f"{ROOT}names/{rec['Name']}", False),
                            (f"{ROOT}vnis/{rec['VNI']}", False), *((key, False) for key in subnets)):
            self.etcd.delete(key, prefix=prefix)

    # ----- addresses and endpoints -------------------------------------------------

    def _leased(self, op: Callable[[int], T]) -> T:
        """`op(lease)`, once more with a fresh lease if ours expired meanwhile (etcd was away a while)."""
        try:
            return op(self.membership.current())
        except LeaseNotFound:
            self.membership.renew()
            return op(self.membership.current())

    def allocate(self, rec: dict[str, Any], holder: str, wanted: Address | None) -> Address:
        """A cluster-wide address in rec's Subnet (of either family) for container `holder`: the first free
        one, claimed with compare-and-swap, bound to our lease."""
        return self._leased(lambda lease: self._allocate(rec, holder, wanted, lease))

    def _allocate(self, rec: dict[str, Any], holder: str, wanted: Address | None, lease: int) -> Address:
        subnet = ipaddress.ip_network(rec["Subnet"])
        gateway = ipaddress.ip_address(rec["Gateway"])
        prefix = f"{ROOT}addresses/{rec['Id']}/"
        if wanted is not None:
            if not self.etcd.create(prefix + str(wanted), holder, lease):
                raise Conflict(f"Address already in use: {wanted} is taken on network {rec['Name']}")
            return wanted
        for _ in range(64):
            taken = {kv.key[len(prefix):] for kv in self.etcd.range(prefix)[0]}
            free = next((a for a in subnet.hosts() if a != gateway and str(a) not in taken), None)
            if free is None:
                break
            if self.etcd.create(prefix + str(free), holder, lease):
                return free
        raise Conflict(f"no available IPv{subnet.version} address on network {rec['Name']}")

    def release(self, network_id: str, address: str, holder: str) -> None:
        """Give an address back, if `holder` (the container that claimed it) still holds it."""
        self.etcd.delete_if_value(f"{ROOT}addresses/{network_id}/{address}", holder)

    def publish(self, endpoint: dict[str, Any]) -> None:
        """Tell every host where this endpoint is (bound to our lease)."""
        body = json.dumps({**endpoint, "Host": self.address})
        key = endpoint_key(endpoint["NetworkID"], endpoint["EndpointID"])
        self._leased(lambda lease: self.etcd.put(key, body, lease=lease))

    def unpublish(self, network_id: str, endpoint_id: str) -> None:
        self.etcd.delete(endpoint_key(network_id, endpoint_id))

    def republish(self, endpoints: list[dict[str, Any]]) -> None:
        """After a new lease: this host's endpoints and their address claims again.

        While this host was cut off longer than the TTL its claims expired, and another host may have
        given one of its addresses to a new container: that claim is not taken over (two containers
        would answer for one address everywhere). The endpoint stays unpublished, which is logged;
        reconnecting its container gives it a free address."""
        def claim(ep: dict[str, Any], lease: int) -> str | None:
            """Claims the endpoint's addresses; returns the first one another endpoint holds (None: all ours)."""
            made = []
            for address in addresses(ep):
                key = f"{ROOT}addresses/{ep['NetworkID']}/{address}"
                if self.etcd.create(key, ep["Container"], lease):
                    made.append(key)
                    continue
                held = self.etcd.get(key)
                if held is not None and held.value.decode() != ep["Container"]:
                    for key in made:
                        self.etcd.delete(key)
                    return address
                self.etcd.put(key, ep["Container"], lease)  # ours, bound to an older lease
            return None

        for ep in endpoints:
            taken = self._leased(lambda lease: claim(ep, lease))  # noqa: B023 (called before the next iteration)
            if taken is None:
                self.publish(ep)
            else:
                log.error("%s on network %s not published again: its address %s was given to another container "
                          "while this host was cut off from the cluster store; reconnect it for a new address",
                          ep.get("ContainerName"), ep.get("NetworkName"), taken)

    # ----- the watch ---------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()

    def run(self, sink: Sink) -> None:
        """List, sync, watch; list again when etcd was away or no longer has the history to watch from, until
        close()."""
        while not self._stop.is_set():
            try:
                self._follow(sink, self.resync(sink))
            except WatchCanceled as exc:
                log.warning("overlay watch listing the cluster again: %s", exc)
                if exc.compact_revision:  # etcd answers, only the history is gone: the listing is what is missed
                    continue
            except ClusterUnavailable as exc:
                log.warning("overlay watch interrupted: %s", exc)
            except Exception:
                log.exception("overlay watch")
            self.connected.clear()
            self._stop.wait(1.0)

    def _follow(self, sink: Sink, revision: int) -> None:
        """Hand the sink every change after `revision`, reconnecting the watch from the last change seen
        while etcd answers; returns when it does not (the caller lists again)."""
        self.connected.set()
        while not self._stop.is_set():
            seen = revision
            for event in self.etcd.watch(ROOT, revision + 1, idle=5):
                revision = max(revision, event.revision)
                if event.revision > self._synced:  # else a listing made meanwhile already has it
                    self._dispatch(sink, event.key, event.value)
            if revision == seen and not self._alive():
                return

    def resync(self, sink: Sink) -> int:
        """Everything listed and handed to the sink (which makes kernel, resolver and this host's own keys
        match it): at start, after an interruption, and when this host had to take a new lease (what it
        missed meanwhile is there at once, not when the watch next reconnects). Returns the revision."""
        kvs, revision = self.etcd.range(ROOT)
        networks = [json.loads(kv.value) for kv in kvs if kv.key.startswith(NETWORKS)]
        endpoints = [json.loads(kv.value) for kv in kvs if kv.key.startswith(ENDPOINTS)]
        hosts = {kv.key[len(NODES):] for kv in kvs if kv.key.startswith(NODES)}
        sink.overlay_sync(networks, endpoints, hosts)
        self._synced = max(self._synced, revision)
        return revision

    def _alive(self) -> bool:
        try:
            self.etcd.get(ROOT + "nodes/" + self.address)
            return True
        except ClusterUnavailable:
            return False

    def _dispatch(self, sink: Sink, key: str, value: bytes | None) -> None:
        if key.startswith(NETWORKS):
            sink.overlay_network(json.loads(value) if value is not None else None, key[len(NETWORKS):])
        elif key.startswith(ENDPOINTS):
            sink.overlay_endpoint(json.loads(value) if value is not None else None, key)
        elif key.startswith(NODES):
            sink.overlay_host(key[len(NODES):], value is not None)

