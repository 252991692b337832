"""The names the embedded resolver answers, kept in memory by the network layer.

Why in memory: the resolver answers from its own thread, and a query must
never wait for the store's lock (taken by every container start) nor decode
JSON. The network manager is the only writer of endpoints, so it keeps this
table in step with the `net_endpoints` rows it inserts, renames and deletes
(loaded once from the store at start-up), and every change bumps
`generation`, which is what the resolver's answer cache is invalidated by.

Who sees what is Docker's rule: a container resolves the endpoints on the
user-defined networks it is attached to itself, in the order they were made.

The resolver answers from a process of its own, which keeps a copy of this
table: `follow` hands it every change, in order and under the table's lock, so
the copy has the change before the engine's attach or detach returns.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterable


@dataclass(frozen=True)
class Entry:
    """One endpoint as the resolver sees it."""

    endpoint: str
    container: str
    network: str
    names: frozenset[str]  # lower-cased: DNS names compare without case
    addresses: tuple[str, ...]  # IPv4 first, then IPv6
    pointer: str  # "container-name.network-name", the PTR answer for its addresses
    order: int  # creation order across networks, so answers keep the order Docker gives


class NameTable:
    """Endpoints by network and container, safe to read from one thread while others write."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # also orders what a follower is told (see follow)
        self._networks: dict[str, dict[str, Entry]] = {}  # network id -> endpoint id -> entry
        self._attached: dict[str, set[str]] = {}  # container id -> network ids
        self._routed: dict[str, set[str]] = {}  # container id -> its endpoints with a gateway (a way out)
        self._endpoints: dict[str, dict[str, Any]] = {}  # endpoint id -> body, oldest first: what a copy needs
        self._order = itertools.count()
        self._follower: Callable[[str, dict[str, Any]], None] | None = None
        self.generation = 0  # bumped by every change; read without the lock by the resolver

    def follow(self, follower: Callable[[str, dict[str, Any]], None] | None) -> list[dict[str, Any]]:
        """From now on call follower("add" | "remove", endpoint) after each change, with the lock held;
        returns the endpoints as they are now (oldest first), from which the follower starts its copy."""
        with self.lock:
            self._follower = follower
            return list(self._endpoints.values())

    def load(self, endpoints: Iterable[dict[str, Any]]) -> None:
        """The endpoints as stored (oldest first), at start-up, before anything follows the table."""
        with self.lock:
            for ep in endpoints:
                self._add(ep)
            self.generation += 1

    def add(self, ep: dict[str, Any]) -> None:
        """A new endpoint, or new names for a known one (same EndpointID)."""
        with self.lock:
            self._add(ep)
            self.generation += 1
            if self._follower is not None:
                self._follower("add", ep)

    def _add(self, ep: dict[str, Any]) -> None:
        cid, network = ep["Container"], ep["NetworkID"]
        self._endpoints[ep["EndpointID"]] = ep
        self._attached.setdefault(cid, set()).add(network)
        if ep.get("Gateway") or ep.get("IPv6Gateway"):
            self._routed.setdefault(cid, set()).add(ep["EndpointID"])
        else:
            self._routed.get(cid, set()).discard(ep["EndpointID"])
        names = ep.get("DNSNames")
        if not names:  # builtin networks: attached (it decides nothing here), but never answered
            return
        entries = self._networks.setdefault(network, {})
        known = entries.get(ep["EndpointID"])  # a rename keeps the endpoint's place
        entries[ep["EndpointID"]] = Entry(
            ep["EndpointID"], cid, network, frozenset(n.lower() for n in names),
            tuple(a for a in (ep.get("IPAddress"), ep.get("GlobalIPv6Address")) if a),
            f"{ep['ContainerName']}.{ep['NetworkName']}", known.order if known else next(self._order))

    def remove(self, ep: dict[str, Any]) -> None:
        with self.lock:
            cid, network = ep["Container"], ep["NetworkID"]
            self._endpoints.pop(ep["EndpointID"], None)
            self._networks.get(network, {}).pop(ep["EndpointID"], None)
            if not self._networks.get(network, True):
                del self._networks[network]
            routed = self._routed.get(cid)
            if routed is not None:
                routed.discard(ep["EndpointID"])
                if not routed:
                    del self._routed[cid]
            attached = self._attached.get(cid)
            if attached is not None:
                attached.discard(network)
                if not attached:
                    del self._attached[cid]
            self.generation += 1
            if self._follower is not None:
                self._follower("remove", ep)

    def _peers(self, cid: str) -> list[Entry]:
        peers = [e for network in self._attached.get(cid, ()) for e in self._networks.get(network, {}).values()]
        peers.sort(key=lambda e: e.order)
        return peers

    def addresses(self, cid: str, name: str) -> list[str]:
        """Addresses (both families) of `name` as container `cid` sees it; [] if unknown there."""
        name = name.lower()
        found: list[str] = []
        with self.lock:
            for entry in self._peers(cid):
                if name in entry.names:
                    found.extend(a for a in entry.addresses if a not in found)
        return found

    def routed(self, cid: str) -> bool:
        """Whether container `cid` has a way out: an endpoint with a gateway (internal networks have none)."""
        with self.lock:
            return bool(self._routed.get(cid))

    def pointers(self, cid: str, address: str) -> list[str]:
        """"name.network" of the endpoints holding `address` that container `cid` sees."""
        with self.lock:
            return [e.pointer for e in self._peers(cid) if address in e.addresses]
