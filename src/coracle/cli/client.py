"""A small Engine API client over the daemon's Unix socket (or tcp://), standard library only.

Requests go unversioned (no `/v1.NN` prefix): every daemon then answers at its
own API level, so the same client drives coracled and dockerd without a
negotiation round trip.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any, BinaryIO, Iterable, Iterator
from urllib.parse import quote, urlencode

DEFAULT_HOST = "unix:///run/coracle/coracle.sock"
USER_AGENT = "coracle-cli"


class ApiError(Exception):
    """The daemon answered with an error status; `message` is its `{"message": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class DaemonUnreachable(Exception):
    """No daemon at the socket (or no permission to talk to it)."""


def host_from_env(flag: str | None) -> str:
    return flag or os.environ.get("CORACLE_HOST") or DEFAULT_HOST


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def path_with_query(path: str, query: dict[str, Any] | None) -> str:
    """Drops None values, encodes bools as 1/0 and dicts as JSON (filters), repeats lists."""
    if not query:
        return path
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                item = "1" if item else "0"
            elif isinstance(item, dict):
                item = json.dumps(item, separators=(",", ":"))
            pairs.append((key, str(item)))
    return path + ("?" + urlencode(pairs) if pairs else "")


def quote_name(name: str) -> str:
    """A path segment for an object name (image names keep their slashes)."""
    return quote(name, safe="/:@")


class Client:
    def __init__(self, host: str | None = None, timeout: float | None = None) -> None:
        self.host = host_from_env(host)
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.headers: dict[str, str] = {}  # extra headers for every request (X-Registry-Auth)

    # ----- connections --------------------------------------------------

    def _new_connection(self) -> http.client.HTTPConnection:
        if self.host.startswith("unix://"):
            return _UnixConnection(self.host[len("unix://"):], self.timeout)
        if self.host.startswith("tcp://") or self.host.startswith("http://"):
            hostport = self.host.split("://", 1)[1].rstrip("/")
            return http.client.HTTPConnection(hostport, timeout=self.timeout)
        raise DaemonUnreachable(f"unsupported host {self.host!r}: use unix:///path or tcp://host:port")

    def _unreachable(self, exc: OSError) -> DaemonUnreachable:
        if isinstance(exc, PermissionError):
            return DaemonUnreachable(
                f"permission denied while trying to connect to the coracle daemon socket at {self.host}: {exc.strerror}")
        return DaemonUnreachable(f"Cannot connect to the coracle daemon at {self.host}. Is coracled running?")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ----- requests -----------------------------------------------------

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                headers: dict[str, str] | None = None, *, content_type: str = "application/json",
                stream: bool = False) -> http.client.HTTPResponse:
        """Send one request; returns the response (body unread when `stream`). Raises ApiError >= 400."""
        target = path_with_query(path, query)
        hdrs = {"User-Agent": USER_AGENT, **self.headers, **(headers or {})}
        data: Any = None
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data = bytes(body)
            elif hasattr(body, "read") or isinstance(body, Iterator):
                data = body  # a file or generator: chunked
                hdrs["Transfer-Encoding"] = "chunked"
            else:
                data = json.dumps(body).encode()
            hdrs["Content-Type"] = content_type
        for attempt in (1, 2):  # a kept-alive connection the daemon closed meanwhile: retry once
            fresh = self._conn is None
            if fresh:
                self._conn = self._new_connection()
            conn = self._conn
            assert conn is not None
            try:
                conn.request(method, target, body=data, headers=hdrs,
                             encode_chunked=hdrs.get("Transfer-Encoding") == "chunked")
                resp = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if fresh or attempt == 2 or (data is not None and not isinstance(data, bytes)):
                    raise self._unreachable(exc) if fresh else exc
            except OSError as exc:
                self.close()
                raise self._unreachable(exc) from None
        if resp.status >= 400:
            raw = resp.read()
            raise ApiError(resp.status, error_message(raw))
        if stream:
            self._conn = None  # the response owns the connection until it is read
        return resp

    def call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
             headers: dict[str, str] | None = None) -> Any:
        """A request whose answer is JSON (or nothing)."""
        raw = self.request(method, path, query, body, headers).read()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        return self.call("GET", path, query)

    def post(self, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        return self.call("POST", path, query, body)

    def json_stream(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                    headers: dict[str, str] | None = None, content_type: str = "application/json"
                    ) -> Iterator[dict[str, Any]]:
        """One JSON object per line (events, pull progress, stats); stops when the daemon ends the stream."""
        resp = self.request(method, path, query, body, headers, content_type=content_type, stream=True)
        return json_lines(resp)

    # ----- hijack -------------------------------------------------------

    def hijack(self, path: str, query: dict[str, Any] | None = None, body: Any = None) -> tuple[socket.socket, bool, bytes]:
        """POST with `Upgrade: tcp`; returns (raw socket, multiplexed?, bytes already read past the head)."""
        conn = self._new_connection()
        try:
            conn.connect()
        except OSError as exc:
            raise self._unreachable(exc) from None
        sock = conn.sock
        data = json.dumps(body if body is not None else {}).encode()
        head = (f"POST {path_with_query(path, query)} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {USER_AGENT}\r\n"
                f"Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        sock.sendall(head + data)
        sock.settimeout(None)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                sock.close()
                raise DaemonUnreachable("the daemon closed the connection during the upgrade")
            buf += chunk
        raw_head, _, rest = buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status >= 400:
            length = int(fields.get("content-length", "0"))
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            sock.close()
            raise ApiError(status, error_message(rest))
        return sock, "multiplexed" in fields.get("content-type", ""), rest


def error_message(raw: bytes) -> str:
    text = raw.decode(errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict) and "message" in doc:
        return str(doc["message"])
    return text


def json_lines(resp: BinaryIO | http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if buf.strip():
        yield json.loads(buf)


def file_chunks(f: BinaryIO, size: int = 1 << 20) -> Iterable[bytes]:
    while chunk := f.read(size):
        yield chunk
