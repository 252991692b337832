"""This host's membership in the cluster: one etcd lease, kept alive, that everything it publishes is bound to.

The lease is the failure detector. Every key a daemon publishes for its
containers (endpoints, address claims) carries its lease, so when a host dies
(daemon and containers gone) etcd itself deletes them TTL seconds later and
every other host sees the deletions through its watch. The lease id is kept
in the data root: a daemon that restarts within the TTL takes its own lease
back (live restore: its containers' entries never disappear). When the lease
did expire (etcd down longer than the TTL, or a long restart), a fresh one is
granted and the `on_renewed` callbacks re-publish this host's entries and
re-read everyone else's before the host announces itself again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable

from coracle.cluster.etcd import ClusterUnavailable, Etcd

log = logging.getLogger(__name__)

DEFAULT_TTL = 10  # seconds: a dead host's endpoints are gone at most this long after its last keepalive
NODES = "/coracle/nodes/"


class Membership:
    """The lease of one host (named by its advertised underlay address) and its keepalive thread."""

    def __init__(self, etcd: Etcd, address: str, state_path: str, ttl: int = DEFAULT_TTL) -> None:
        self.etcd = etcd
        self.address = address
        self.state_path = state_path
        self.ttl = ttl
        self.lease = 0
        self.on_renewed: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Take the saved lease back or grant one (best effort: etcd may be down; the thread retries)."""
        try:
            with open(self.state_path) as f:
                saved = int(json.load(f).get("lease", 0))
        except (OSError, ValueError):
            saved = 0
        try:
            if saved and self.etcd.keepalive(saved) > 0:
                self.lease = saved
                self._announce()
            else:
                self.renew()
        except ClusterUnavailable as exc:
            log.warning("cluster store unreachable at start-up, retrying: %s", exc)
        self._thread = threading.Thread(target=self._run, daemon=True, name="cluster-lease")
        self._thread.start()

    def close(self) -> None:
        """Stop refreshing; the lease is kept (a restart within the TTL takes it back)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def current(self) -> int:
        """The lease to bind new keys to; raises ClusterUnavailable while there is none."""
        if not self.lease:
            raise ClusterUnavailable("this host has no lease in the cluster store (unreachable since start-up)")
        return self.lease

    def _announce(self) -> None:
        self.etcd.put(NODES + self.address, json.dumps({"address": self.address}), lease=self.lease)

    def renew(self) -> None:
        """A new lease (the old one expired); the callbacks publish this host's keys again and re-read what
        the others published, and only then is the host announced: a peer that sees it back sees it whole."""
        with self._lock:
            self.lease = self.etcd.grant(self.ttl)
            tmp = self.state_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"lease": self.lease}, f)
            os.replace(tmp, self.state_path)
        log.info("cluster lease %x granted (TTL %d s)", self.lease, self.ttl)
        for callback in self.on_renewed:
            try:
                callback()
            except Exception:
                log.exception("re-publishing after a new cluster lease")
        self._announce()

    def _run(self) -> None:
        while not self._stop.wait(max(1.0, self.ttl / 3)):
            try:
                if not self.lease or self.etcd.keepalive(self.lease) <= 0:
                    self.renew()
            except ClusterUnavailable as exc:
                log.warning("cluster lease not refreshed: %s", exc)
            except Exception:
                log.exception("cluster lease keepalive")
