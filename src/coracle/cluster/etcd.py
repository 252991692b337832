"""A small etcd v3 client over etcd's HTTP/JSON gateway, standard library only.

Why not a library: the grpc-based python-etcd3 is unmaintained and drags grpcio
in; the maintained `etcd3gw` talks to the same gateway but takes one endpoint
(no failover across members), pulls in requests, futurist and pbr, and its
watches run in threads we cannot time out. What coracle needs is small (range,
put, delete, one-key compare-and-swap transactions, leases, watches) and must
never hang: every call here carries a timeout, tries each listed member in turn
(one member down is no outage) and raises `ClusterUnavailable` when none
answers. Keys and values are base64 on the wire; this module hides that.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from coracle.errors import CoracleError

DEFAULT_TIMEOUT = 3.0


class ClusterUnavailable(CoracleError):
    """No etcd member answered: the cluster store is down or unreachable from this host."""

    status = 503


class LeaseNotFound(CoracleError):
    """A key was bound to a lease that expired (the holder must take a new lease and publish again)."""


class WatchCanceled(CoracleError):
    """etcd ended a watch it cannot go on with; mostly because its start revision was compacted away.

    Then the changes since that revision are gone from etcd's history: watching
    from it again fails again, and only a new listing tells what changed.
    """

    def __init__(self, reason: str, compact_revision: int = 0) -> None:
        super().__init__(reason)
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class TLSConfig:
    """Client TLS for etcd members served over https (Docker's --cluster-store-opt kv.* files)."""

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cafile)
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Event:
    """One change seen by a watch: a put (value set) or a delete (value None)."""

    key: str
    value: bytes | None
    revision: int


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with `prefix` (etcd's range_end for a prefix)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return raw.decode("latin-1")
        raw.pop()
    return "\0"


def _kv(rec: dict[str, Any]) -> KeyValue:
    return KeyValue(key=_unb64(rec["key"]).decode(), value=_unb64(rec.get("value", "")),
                    create_revision=int(rec.get("create_revision", 0)), mod_revision=int(rec.get("mod_revision", 0)),
                    lease=int(rec.get("lease", 0)))


def parse_endpoints(spec: str, tls: bool = False) -> list[str]:
    """`etcd://IP:PORT[,IP:PORT...]` (Docker's --cluster-store) -> base URLs, one per member."""
    scheme, sep, rest = spec.partition("://")
    if not sep or scheme != "etcd" or not rest:
        raise ValueError(f"cluster store must look like etcd://IP:PORT[,IP:PORT...], not {spec!r}")
    urls = []
    for member in rest.strip("/").split(","):
        host, _, port = member.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster store member {member!r} needs IP:PORT")
        urls.append(f"{'https' if tls else 'http'}://{member}")
    return urls


class Etcd:
    """One client for a list of etcd members; thread-safe (a connection per call)."""

    def __init__(self, endpoints: list[str], timeout: float = DEFAULT_TIMEOUT, tls: TLSConfig | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._ssl = tls.context() if tls else None
        self._preferred = 0  # the member that answered last: asked first next time

    # ----- transport ---------------------------------------------------------

    def _connect(self, url: str, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)

    def _members(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._preferred + i) % n for i in range(n)]

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one gateway request to the first member that answers."""
        data = json.dumps(body).encode()
        errors = []
        for i in self._members():
            conn = self._connect(self.endpoints[i], self.timeout)
            try:
                conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{self.endpoints[i]}: {e or type(e).__name__}")
                continue
            finally:
                conn.close()
            try:
                answer: dict[str, Any] = json.loads(raw or b"{}")
            except ValueError:
                answer = {"error": raw[:200].decode(errors="replace")}
            if resp.status >= 500:  # this member cannot answer (no leader, timed out, shutting down): next one
                errors.append(f"{self.endpoints[i]}: {answer.get('error') or answer.get('message') or resp.status}")
                continue
            if resp.status != 200:
                error = str(answer.get("error") or answer.get("message") or resp.status)
                raise (LeaseNotFound if "lease not found" in error else CoracleError)(f"etcd {path}: {error}")
            self._preferred = i
            return answer
        raise ClusterUnavailable(f"cluster store unreachable ({'; '.join(errors)})")

    # ----- keys ----------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the store revision they were read at (to watch from)."""
        answer = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return [_kv(r) for r in answer.get("kvs", [])], int(answer["header"]["revision"])

    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete one key (or every key under it); returns how many were deleted."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return int(self.call("/v3/kv/deleterange", body).get("deleted", 0))

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
             failure: list[dict[str, Any]] | None = None) -> bool:
        answer = self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(answer.get("succeeded", False))

    @staticmethod
    def _put_op(key: str, value: bytes | str, lease: int = 0) -> dict[str, Any]:
        op: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            op["lease"] = str(lease)
        return {"request_put": op}

    def create(self, key: str, value: bytes | str, lease: int = 0) -> bool:
        """Put `key` only if it does not exist (compare create_revision == 0): the cluster-wide claim."""
        return self._txn([{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                         [self._put_op(key, value, lease)])

    def replace(self, key: str, value: bytes | str, mod_revision: int, lease: int = 0) -> bool:
        """Put `key` only if nobody changed it since `mod_revision` (compare-and-swap)."""
        return self._txn([{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
                         [self._put_op(key, value, lease)])

    def delete_if(self, key: str, mod_revision: int) -> bool:
        """Delete `key` only if it is still the version read at `mod_revision`."""
        return self._txn([{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
                         [{"request_delete_range": {"key": _b64(key)}}])

    def delete_if_value(self, key: str, value: bytes | str) -> bool:
        """Delete `key` only if it still holds `value` (a claim released by its holder, never by another)."""
        return self._txn([{"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}],
                         [{"request_delete_range": {"key": _b64(key)}}])

    # ----- leases ----------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh a lease; returns its remaining TTL (0 or less: it expired and is gone)."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.call("/v3/lease/revoke", {"ID": str(lease)})

    # ----- watches -----------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, idle: float = 10.0) -> Iterator[Event]:
        """Changes under `prefix` from `start_revision` on, from the first member that answers.

        Ends (returns) when the stream closes or is silent for longer than `idle`
        seconds (a member that died without closing the connection looks like
        silence too); the caller watches again from the last revision it saw.
        Raises ClusterUnavailable when no member takes the watch, WatchCanceled
        when etcd refuses it (`compact_revision` set: the start revision was
        compacted away, so the caller must list again and watch from the
        listing's revision).
        """
        body = json.dumps({"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                              "start_revision": str(start_revision), "progress_notify": True}})
        errors = []
        for i in self._members():
            conn = self._connect(self.endpoints[i], self.timeout)
            try:
                conn.request("POST", "/v3/watch", body=body.encode(), headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                if resp.status != 200:
                    errors.append(f"{self.endpoints[i]}: HTTP {resp.status}")
                    conn.close()
                    continue
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{self.endpoints[i]}: {e or type(e).__name__}")
                conn.close()
                continue
            self._preferred = i
            yield from self._stream(conn, resp, idle)
            return
        raise ClusterUnavailable(f"cluster store unreachable ({'; '.join(errors)})")

    @staticmethod
    def _stream(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, idle: float) -> Iterator[Event]:
        if conn.sock is not None:
            conn.sock.settimeout(idle)
        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException):
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if compacted := int(result.get("compact_revision", 0)):
                    raise WatchCanceled(f"etcd compacted its history past the watch's start (now from revision "
                                        f"{compacted} on)", compacted)
                if result.get("canceled"):
                    raise WatchCanceled(f"etcd canceled the watch: {result.get('cancel_reason') or 'no reason given'}")
                for ev in result.get("events", []):
                    kv = ev["kv"]
                    yield Event(key=_unb64(kv["key"]).decode(),
                                value=None if ev.get("type") == "DELETE" else _unb64(kv.get("value", "")),
                                revision=int(kv.get("mod_revision", 0)))
        finally:
            conn.close()
