"""Endpoint records: which container is on which network, with what address and MAC.

One row per (network, container) in the `net_endpoints` table, whose UNIQUE key
makes joining one network twice impossible whatever the threads do. The body
is Docker's EndpointSettings plus private keys (`Endpoint.body`), the format
the store has always had, so a daemon upgraded in place reads its old rows.

The in-memory name table of the resolver (names.py) is kept in step with every
insert, update and delete made here: it is the only writer of endpoints.
"""

from __future__ import annotations

import json
import sqlite3

from coracle.errors import Conflict
from coracle.network.driver import Endpoint
from coracle.network.names import NameTable
from coracle.store import Store

__all__ = ["EndpointTable"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS net_endpoints (
    id TEXT PRIMARY KEY,
    network TEXT NOT NULL,
    container TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (network, container)
);
CREATE INDEX IF NOT EXISTS net_endpoints_container ON net_endpoints(container);
"""


class EndpointTable:
    """The endpoint rows of one daemon, and the name table that mirrors them."""

    def __init__(self, store: Store, names: NameTable) -> None:
        self.store = store
        self.names = names
        store.schema(SCHEMA)

    def of(self, container: str | None = None, network: str | None = None) -> list[Endpoint]:
        """Endpoints of a container and/or a network (all when neither is given), oldest first."""
        where, args = [], []
        if container is not None:
            where.append("container = ?")
            args.append(container)
        if network is not None:
            where.append("network = ?")
            args.append(network)
        sql = "SELECT body FROM net_endpoints" + (" WHERE " + " AND ".join(where) if where else "")
        return [Endpoint.from_body(json.loads(r[0])) for r in self.store.execute(sql + " ORDER BY rowid", tuple(args))]

    def insert(self, ep: Endpoint) -> None:
        """The reservation other threads see; a second endpoint of the container on the network is refused."""
        try:
            self.store.execute("INSERT INTO net_endpoints(id, network, container, body) VALUES (?, ?, ?, ?)",
                               (ep.id, ep.network_id, ep.container_id, json.dumps(ep.body())))
        except sqlite3.IntegrityError:
            raise Conflict(f"endpoint with name {ep.container_name} already exists in network "
                           f"{ep.network_name}") from None
        self.names.add(ep.body())

    def update(self, ep: Endpoint, *, names_changed: bool = False) -> None:
        """A changed body (its interface once wired, its names after a rename)."""
        self.store.execute("UPDATE net_endpoints SET body = ? WHERE id = ?", (json.dumps(ep.body()), ep.id))
        if names_changed:
            self.names.add(ep.body())

    def replace(self, ep: Endpoint, leases: list[str]) -> None:
        """Record an endpoint found in the kernel (adoption), with the leases of its addresses, at once."""
        with self.store.tx() as db:
            db.execute("DELETE FROM net_endpoints WHERE network = ? AND container = ?",
                       (ep.network_id, ep.container_id))
            db.execute("INSERT INTO net_endpoints(id, network, container, body) VALUES (?, ?, ?, ?)",
                       (ep.id, ep.network_id, ep.container_id, json.dumps(ep.body())))
            for address in leases:
                db.execute("INSERT OR IGNORE INTO net_leases(network, address, container) VALUES (?, ?, ?)",
                           (ep.network_id, address, ep.container_id))

    def delete(self, ep: Endpoint) -> None:
        self.store.execute("DELETE FROM net_endpoints WHERE id = ?", (ep.id,))
        self.names.remove(ep.body())
