"""A small Engine API client over the daemon's Unix socket (or tcp://): sockets and a bit of HTTP/1.1.

Why not http.client: importing it drags in ssl and the email package, about
half of the command's start-up time, for features the Engine API never uses.
What is here is what the API needs: Content-Length and chunked bodies both
ways, keep-alive, streamed responses, and the `Upgrade: tcp` hijack.

Requests go unversioned (no `/v1.NN` prefix): every daemon then answers at its
own API level, so the same client drives coracled and dockerd without a
negotiation round trip.
"""

from __future__ import annotations

import os

# The C module under `socket`: the same socket objects, without building the socket module's
# enum classes (AddressFamily, SocketKind, MsgFlag ...) at every command's start.
import _socket as socket

from coracle.cli import wirejson

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any, BinaryIO
    from collections.abc import Iterable, Iterator


DEFAULT_HOST = "unix:///run/coracle/coracle.sock"
USER_AGENT = "coracle-cli"


class ApiError(Exception):
    """The daemon answered with an error status; `message` is its `{"message": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class DaemonUnreachable(Exception):
    """No daemon at the socket (or no permission to talk to it)."""


class _Closed(Exception):
    """A kept-alive connection the daemon had closed: worth one retry on a new one."""


def host_from_env(flag: str | None) -> str:
    """-H, then CORACLE_HOST, then DOCKER_HOST; an ordinary user's default is their own
    rootless daemon's socket when it exists (see coracle.rootless.paths)."""
    chosen = flag or os.environ.get("CORACLE_HOST") or os.environ.get("DOCKER_HOST")
    if chosen:
        return chosen
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() != 0 and runtime_dir and os.path.exists(os.path.join(runtime_dir, "coracle.sock")):
        return f"unix://{os.path.join(runtime_dir, 'coracle.sock')}"
    return DEFAULT_HOST


class Response:
    """One HTTP response read from a socket; the body is read on demand (`read`, `read1`)."""

    def __init__(self, sock: socket.socket, method: str) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._eof = False
        line = self._line()
        if not line:
            raise _Closed()
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise DaemonUnreachable(f"malformed response from the daemon: {line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        while (raw := self._line()) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        no_body = method == "HEAD" or self.status in (101, 204, 304) or 100 <= self.status < 200
        self._left: int | None = 0 if no_body else (None if self.chunked or length is None else int(length))
        self._chunk_left = 0
        self.done = no_body or self._left == 0
        self._preloaded = b""
        self.will_close = self.headers.get("connection", "").lower() == "close" or (
            not no_body and not self.chunked and length is None)

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self.sock.recv(65536)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _line(self) -> bytes:
        while (i := self._buf.find(b"\n")) < 0:
            if not self._fill():
                out = bytes(self._buf)
                self._buf.clear()
                return out
        out = bytes(self._buf[:i + 1])
        del self._buf[:i + 1]
        return out

    def _take(self, n: int) -> bytes:
        if not self._buf and not self._fill():
            raise ConnectionResetError("the daemon closed the connection mid-response")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def preload(self) -> None:
        """Read the whole body now (the connection can then serve the next request); read() still returns it."""
        self._preloaded = self.read()

    def read1(self, n: int = 65536) -> bytes:
        """Up to n bytes of body, as soon as some are there; b"" at the end."""
        if self._preloaded:
            out, self._preloaded = self._preloaded[:n], self._preloaded[n:]
            return out
        if self.done:
            return b""
        if self.chunked:
            if self._chunk_left == 0:
                size = int(self._line().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self._line() not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    return b""
                self._chunk_left = size
            data = self._take(min(n, self._chunk_left))
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                self._line()  # the CRLF after the chunk
            return data
        if self._left is None:  # delimited by the close
            if not self._buf and not self._fill():
                self.done = True
                return b""
            return self._take(n)
        data = self._take(min(n, self._left))
        self._left -= len(data)
        self.done = self._left == 0
        return data

    def read(self, amt: int | None = None) -> bytes:
        out = bytearray()
        while amt is None or len(out) < amt:
            data = self.read1(65536 if amt is None else amt - len(out))
            if not data:
                break
            out += data
        return bytes(out)

    def close(self) -> None:
        self.sock.close()


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
                item = wirejson.dumps(item, compact=True)
            pairs.append((key, str(item)))
    return path + ("?" + "&".join(f"{_percent(k, plus=True)}={_percent(v, plus=True)}" for k, v in pairs)
                   if pairs else "")


def quote_name(name: str) -> str:
    """A path segment for an object name (image names keep their slashes)."""
    return _percent(name, safe="/:@")


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def _percent(text: str, safe: str = "", plus: bool = False) -> str:
    """urllib.parse's quote (quote_plus with `plus`, as urlencode uses), without importing urllib.parse
    (and ipaddress with it) on every command."""
    keep = _UNRESERVED | frozenset(safe.encode()) | (frozenset(b" ") if plus else frozenset())
    out = "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode())
    return out.replace(" ", "+") if plus else out


class Client:
    def __init__(self, host: str | None = None, timeout: float | None = None) -> None:
        self.host = host_from_env(host)
        self.timeout = timeout
        self._sock: socket.socket | None = None  # kept alive between requests
        self.headers: dict[str, str] = {}  # extra headers for every request (X-Registry-Auth)

    # ----- connections --------------------------------------------------

    def _connect(self) -> socket.socket:
        try:
            if self.host.startswith("unix://"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                address: Any = self.host[len("unix://"):]
            elif self.host.startswith(("tcp://", "http://")):
                hostport = self.host.split("://", 1)[1].rstrip("/")
                name, _, port = hostport.rpartition(":")
                sock = socket.socket(socket.AF_INET6 if ":" in name.strip("[]") else socket.AF_INET)
                address = (name.strip("[]"), int(port))
            else:
                raise DaemonUnreachable(f"unsupported host {self.host!r}: use unix:///path or tcp://host:port")
            sock.settimeout(self.timeout)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            if isinstance(exc, PermissionError):
                raise DaemonUnreachable(f"permission denied while trying to connect to the coracle daemon socket at "
                                        f"{self.host}: {exc.strerror}") from None
            raise DaemonUnreachable(
                f"Cannot connect to the coracle daemon at {self.host}. Is coracled running?") from None
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ----- requests -----------------------------------------------------

    @staticmethod
    def _head(method: str, target: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost", f"User-Agent: {USER_AGENT}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, sock: socket.socket, method: str, target: str, data: Any, headers: dict[str, str]) -> None:
        if data is None or isinstance(data, bytes):
            sock.sendall(self._head(method, target, headers) + (data or b""))
            return
        sock.sendall(self._head(method, target, headers))
        chunks = iter(lambda: data.read(1 << 20), b"") if hasattr(data, "read") else data
        for chunk in chunks:
            if chunk:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                headers: dict[str, str] | None = None, *, content_type: str = "application/json",
                stream: bool = False) -> Response:
        """Send one request; returns the response (body unread when `stream`). Raises ApiError >= 400.

        `body` is JSON-able, bytes, or a file/iterator of bytes (sent chunked: image load, import).
        """
        target = path_with_query(path, query)
        hdrs = {**self.headers, **(headers or {})}
        data: Any = None
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data = bytes(body)
            elif hasattr(body, "read") or hasattr(body, "__next__"):
                data = body
                hdrs["Transfer-Encoding"] = "chunked"
            else:
                data = wirejson.dumps(body).encode()
            hdrs["Content-Type"] = content_type
        if data is None or isinstance(data, bytes):
            hdrs["Content-Length"] = str(len(data or b""))
        while True:
            kept, self._sock = self._sock, None
            reused = kept is not None
            sock = kept if kept is not None else self._connect()
            try:
                self._send(sock, method, target, data, hdrs)
                resp = Response(sock, method)
                break
            except (_Closed, BrokenPipeError, ConnectionResetError):
                sock.close()
                if not reused or not (data is None or isinstance(data, bytes)):
                    raise DaemonUnreachable("the daemon closed the connection") from None
        if resp.status >= 400:
            raw = resp.read()
            self._keep(resp)
            raise ApiError(resp.status, error_message(raw))
        if not stream:
            resp.preload()
            self._keep(resp)
        return resp

    def _keep(self, resp: Response) -> None:
        """Keep the connection for the next request when the response is complete and the daemon allows."""
        if resp.done and not resp.will_close:
            self._sock = resp.sock
        else:
            resp.close()

    def call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
             headers: dict[str, str] | None = None) -> Any:
        """A request whose answer is JSON (or nothing)."""
        raw = self.request(method, path, query, body, headers).read()
        if not raw.strip():
            return None
        try:
            return wirejson.loads(raw)
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

    def hijack(self, path: str, query: dict[str, Any] | None = None,
               body: Any = None) -> tuple[socket.socket, bool, bytes]:
        """POST with `Upgrade: tcp`; returns (raw socket, multiplexed?, bytes already read past the head)."""
        return self.upgraded(self.send_upgrade(path, query, body))

    def send_upgrade(self, path: str, query: dict[str, Any] | None = None, body: Any = None) -> socket.socket:
        """hijack's first half: the request sent on a connection of its own, the answer left unread
        (`run` sends its attach and its wait before it reads either answer: one round trip, not two)."""
        sock = self._connect()
        data = wirejson.dumps(body if body is not None else {}).encode()
        headers = {"Content-Type": "application/json", "Connection": "Upgrade", "Upgrade": "tcp",
                   "Content-Length": str(len(data))}
        sock.sendall(self._head("POST", path_with_query(path, query), headers) + data)
        return sock

    def send(self, method: str, path: str, query: dict[str, Any] | None = None) -> socket.socket:
        """A request without a body on a connection of its own, its answer left to `answer`."""
        sock = self._connect()
        sock.sendall(self._head(method, path_with_query(path, query), {**self.headers, "Content-Length": "0"}))
        return sock

    @staticmethod
    def answer(sock: socket.socket, method: str, during: str = "") -> Response:
        """The head of the answer to `send` (the body unread); raises ApiError >= 400."""
        try:
            resp = Response(sock, method)
        except _Closed:
            sock.close()
            raise DaemonUnreachable("the daemon closed the connection" + during) from None
        if resp.status >= 400:
            raw = resp.read()
            sock.close()
            raise ApiError(resp.status, error_message(raw))
        return resp

    @classmethod
    def upgraded(cls, sock: socket.socket) -> tuple[socket.socket, bool, bytes]:
        """hijack's second half: the daemon's answer to the upgrade."""
        sock.settimeout(None)
        resp = cls.answer(sock, "POST", " during the upgrade")
        return sock, "multiplexed" in resp.headers.get("content-type", ""), bytes(resp._buf)


def error_message(raw: bytes) -> str:
    text = raw.decode(errors="replace").strip()
    try:
        doc = wirejson.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict) and "message" in doc:
        return str(doc["message"])
    return text


def json_lines(resp: Response) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield wirejson.loads(line)
    if buf.strip():
        yield wirejson.loads(buf)


def file_chunks(f: BinaryIO, size: int = 1 << 20) -> Iterable[bytes]:
    while chunk := f.read(size):
        yield chunk
