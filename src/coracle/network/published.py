"""Published ports of containers: host ports chosen, reserved in the store, handed to the firewall.

Reservations live in the `net_ports` table whose PRIMARY KEY (proto, host
address, host port) makes handing one port out twice impossible; the firewall
holds the DNAT map elements. Both are changed together, and every method
accepts rows or elements that are already gone.

A mapping from an IPv6 host address to a container with no IPv6 address (the
[::] half of `-p 8080:80`, or `-p [::1]:8080:80`, on an IPv4-only network)
cannot be a DNAT element: it goes to the port proxy process (portproxy.py),
as Docker's userland proxy serves it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from typing import Any

from coracle.errors import Conflict, InvalidParameter
from coracle.faults import fault
from coracle.netns import netns
from coracle.network import ports
from coracle.network.driver import Endpoint
from coracle.network.firewall import FirewallDriver
from coracle.network.ports import Mapping, PortRequest
from coracle.network.portproxy import PortProxy, proxied
from coracle.store import Store
from coracle.undo import Undo

__all__ = ["PortTable"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS net_ports (
    proto TEXT NOT NULL,
    host_ip TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    container TEXT NOT NULL,
    network TEXT NOT NULL,
    container_ip TEXT NOT NULL,
    container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port)
);
"""
COLUMNS = "proto, host_ip, host_port, container_ip, container_port"


class PortTable:
    """Host ports of the daemon's containers (see the module docstring)."""

    def __init__(self, store: Store, firewall: FirewallDriver, host_netns: str, lock: threading.RLock,
                 exec_root: str) -> None:
        self.store, self.firewall, self.host_netns, self._lock = store, firewall, host_netns, lock
        self.proxy = PortProxy(exec_root, host_netns, lambda: [m for m in self.all() if proxied(m)])
        self._last: dict[str, int] = {}  # protocol -> the last ephemeral port handed out
        self._ipv6: bool | None = None  # whether the host can listen on IPv6 (asked once)
        store.schema(SCHEMA)

    def close(self) -> None:
        """The daemon stops: the port proxy goes too, unless it still serves running containers' ports."""
        self.proxy.close()

    def all(self) -> list[Mapping]:
        return [Mapping(*row) for row in self.store.execute(f"SELECT {COLUMNS} FROM net_ports")]

    def by_container(self) -> list[tuple[str, Mapping]]:
        """(container id, mapping) of every reservation."""
        rows = self.store.execute(f"SELECT container, {COLUMNS} FROM net_ports")
        return [(row[0], Mapping(*row[1:])) for row in rows]

    def of(self, container: str) -> bool:
        return bool(self.store.execute("SELECT 1 FROM net_ports WHERE container = ?", (container,)))

    def publish(self, container: str, requests: Sequence[PortRequest], ep: Endpoint, undo: Undo) -> list[Mapping]:
        """Choose host ports, reserve them in the store, then add the map elements (all or nothing)."""
        if not requests:
            return []
        with self._lock:
            # (proto, port) -> host addresses already using it: the 1000th port costs what the first did
            taken: dict[tuple[str, int], list[str]] = {}
            for proto, host_ip, host_port in self.store.execute("SELECT proto, host_ip, host_port FROM net_ports"):
                taken.setdefault((proto, host_port), []).append(host_ip)
            chosen: list[Mapping] = []
            with netns(self.host_netns):  # once for all ports, not once per port
                for req in requests:
                    # Docker's: an IPv6 host address reaches an IPv4-only container through the proxy
                    targets = {ip: ep.ipv6 or ep.ipv4 if ports.version(ip) == 6 else ep.ipv4
                               for ip in [req.host_ip] + (["::"] if req.dual and self._ipv6_listenable() else [])}
                    host_ips = [ip for ip, target in targets.items() if target]
                    if not host_ips:
                        raise InvalidParameter(f"cannot publish {req.key} on {req.host_ip}: the container has no "
                                               f"address of that family on network {ep.network_name}")
                    port = self._choose_port(req, host_ips, taken)
                    for ip in host_ips:
                        taken.setdefault((req.proto, port), []).append(ip)
                        chosen.append(Mapping(req.proto, ip, port, targets[ip], req.container_port))
            self.reserve(container, ep.network_id, chosen)
        undo.add(lambda: self.store.execute("DELETE FROM net_ports WHERE container = ?", (container,)))
        self.firewall.add_mappings([m for m in chosen if not proxied(m)])
        fault("network-after-nft")
        undo.add(lambda: self.firewall.remove_mappings([m for m in chosen if not proxied(m)]))
        self.proxy.add([m for m in chosen if proxied(m)])
        undo.add(lambda: self.proxy.remove([m for m in chosen if proxied(m)]))
        return chosen

    def apply(self, mappings: Sequence[Mapping]) -> None:
        """Serve mappings already reserved (adopted ones): DNAT elements, and the proxy for IPv6 to IPv4."""
        self.firewall.add_mappings([m for m in mappings if not proxied(m)])
        self.proxy.add([m for m in mappings if proxied(m)])

    def withdraw(self, mappings: Sequence[Mapping]) -> None:
        """Stop serving mappings, wherever they are served; already gone is fine."""
        self.firewall.remove_mappings([m for m in mappings if not proxied(m)])
        self.proxy.remove([m for m in mappings if proxied(m)])

    def routed(self) -> list[Mapping]:
        """The reserved mappings that are DNAT elements (the firewall's share)."""
        return [m for m in self.all() if not proxied(m)]

    def served(self) -> list[Mapping]:
        """What serves published ports now: the firewall's DNAT elements and the proxy's listeners."""
        return [*self.firewall.mappings(), *self.proxy.serving()]

    def restore(self) -> None:
        """At daemon start: the proxy process that outlived the old daemon keeps its listeners; what the
        store reserves and nothing serves is served again (a port a process of the host took meanwhile
        is reported, not fought for)."""
        serving = set(self.proxy.serving())
        for m in self.all():
            if proxied(m) and m not in serving:
                try:
                    self.proxy.add([m])
                except (Conflict, OSError) as exc:
                    log.warning("cannot publish %s:%s/%s again: %s", m.host_ip, m.host_port, m.proto, exc)

    def _ipv6_listenable(self) -> bool:
        """Whether the host can listen on IPv6 (Docker's IsV6Listenable: [::1]:0 binds); without it a port
        is published on IPv4 only. Runs in the host's namespace (see publish)."""
        if self._ipv6 is None:
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
                    sock.bind(("::1", 0))
                self._ipv6 = True
            except OSError:
                self._ipv6 = False
        return self._ipv6

    def reserve(self, container: str, network: str, mappings: Sequence[Mapping], *, adopted: bool = False) -> None:
        """The store rows of mappings (adopted ones: as found in the kernel, existing rows kept)."""
        verb = "INSERT OR IGNORE" if adopted else "INSERT"
        with self.store.tx() as db:
            for m in mappings:
                db.execute(f"{verb} INTO net_ports VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (m.proto, m.host_ip, m.host_port, container, network, m.container_ip, m.container_port))

    def unpublish(self, container: str, network: str | None = None) -> None:
        """Drop the mappings of a container (on one network, or all); already gone is fine."""
        sql, args = " WHERE container = ?", [container]
        if network is not None:
            sql, args = sql + " AND network = ?", [container, network]
        rows = self.store.execute(f"SELECT {COLUMNS} FROM net_ports" + sql, tuple(args))
        if rows:
            self.withdraw([Mapping(*r) for r in rows])
            self.store.execute("DELETE FROM net_ports" + sql, tuple(args))

    def _choose_port(self, req: PortRequest, host_ips: list[str], taken: dict[tuple[str, int], list[str]]) -> int:
        """A host port free on every one of `host_ips` (the request's address, and :: when dual): the
        given one, the first free of a range, or an ephemeral one.

        Ephemeral ports are handed out as Docker's port allocator does: the one after the last handed
        out (per protocol, from the start of the kernel's ip_local_port_range), wrapping at its end, so
        a port just released is not given to the next container at once.

        Runs with the calling thread in the host's network namespace (see publish)."""
        if req.host_port and not req.host_end:
            candidates: list[int] = [req.host_port]
        elif req.host_port:
            candidates = list(range(req.host_port, req.host_end + 1))
        else:
            low, high = ports.ephemeral_range()
            start = self._last.get(req.proto, high) + 1
            start = start if low <= start <= high else low
            candidates = [*range(start, high + 1), *range(low, start)]
        shown = ports.shown(req.host_ip)
        for port in candidates:
            if any(ports.overlaps(ip, wanted) for wanted in host_ips for ip in taken.get((req.proto, port), ())):
                continue
            busy = [ip for ip in host_ips if not ports.host_port_free(req.proto, ip, port)]
            if not busy:
                if not req.host_port:
                    self._last[req.proto] = port
                return port
            if len(candidates) == 1:
                raise Conflict(f"Bind for {ports.shown(busy[0])}:{port} failed: address already in use by a "
                               "process of the host")
        if len(candidates) == 1:
            raise Conflict(f"Bind for {shown}:{candidates[0]} failed: port is already allocated")
        raise Conflict(f"no free host port for {shown}:{req.host_port or ''}"
                       f"{'-' + str(req.host_end) if req.host_end else ''}/{req.proto}: all are allocated")

    @staticmethod
    def recorded(ports_view: dict[str, Any], ep: Endpoint | None) -> list[Mapping]:
        """Docker's NetworkSettings.Ports back into mappings to the endpoint's addresses."""
        if ep is None:
            return []
        out = []
        for key, bindings in ports_view.items():
            port, _, proto = key.partition("/")
            for b in bindings or []:
                host_ip = b.get("HostIp") or "0.0.0.0"
                target = ep.ipv6 or ep.ipv4 if ":" in host_ip else ep.ipv4
                if target and str(b.get("HostPort") or "").isdigit():
                    out.append(Mapping(proto or "tcp", host_ip, int(b["HostPort"]), target, int(port)))
        return out
