"""HTTP/1.1 for the Engine API on a Unix socket, on asyncio, with Docker's hijack.

Why not a framework: `docker attach`/`exec` upgrade the connection to a raw
two-way stream and half-close their side at stdin EOF while output must keep
flowing; that needs the transport under our control. The protocol subset is
small: request line, headers, Content-Length or chunked bodies, `Expect:
100-continue`, keep-alive, chunked streaming responses, and the 101 upgrade.

Handlers are `async def handler(req, **params)` returning a `Response`, a
`StreamResponse` (chunked, written by a producer coroutine), a `Hijack` (the
raw socket is handed to a session coroutine) or None (204).

The `Server` header names the Docker release whose API level we serve
(27.0 speaks API 1.47) with a `-coracle` suffix: clients that sniff the
product see Docker-compatible numbers and can still tell who answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import re
import socket
import tempfile
from functools import partial
from typing import Any
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from urllib.parse import parse_qs, unquote, urlsplit

from coracle.errors import CoracleError, InvalidParameter, NotFound, PayloadTooLarge

log = logging.getLogger("coracle.api")

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
DOCKER_COMPAT = "27.0.0"  # the Docker release whose API level (1.47) we serve
SERVER = f"Docker/{DOCKER_COMPAT}-coracle (linux)"
JSON_LIMIT = 16 << 20  # buffered (JSON) request bodies
STREAM_LIMIT = 1 << 30  # streamed (tar) request bodies, unless the route or serve() says otherwise
LINGER = 2.0  # seconds to keep draining a refused upload before closing
HEADER_LIMIT = 64 << 10  # all header lines of one request together
LINE_LIMIT = 1 << 20  # one line (and the reader's buffer: big uploads flow without pausing)
BACKLOG = 1024  # connections waiting to be accepted
RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"

_MIN = tuple(int(x) for x in MIN_API_VERSION.split("."))
_MAX = tuple(int(x) for x in API_VERSION.split("."))
_VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")
_REASONS = {101: "UPGRADED", 200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
            400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
            413: "Payload Too Large", 500: "Internal Server Error", 501: "Not Implemented"}
_BLANK = (b"\r\n", b"\n")


class Headers(MutableMapping[str, str]):
    """Request headers, looked up case-insensitively (`X-Registry-Auth` == `x-registry-auth`)."""

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = {}
        for key, value in (items or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __setitem__(self, key: str, value: str) -> None:
        self._items[key.lower()] = value

    def __delitem__(self, key: str) -> None:
        del self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def split_version(path: str) -> tuple[str, str]:
    """(`/containers/json`, "1.41") from `/v1.41/containers/json`; Docker's messages outside 1.24..1.47."""
    match = _VERSION_PREFIX.match(path)
    if not match:
        return path, API_VERSION
    wanted = (int(match.group(1)), int(match.group(2)))
    text = f"{wanted[0]}.{wanted[1]}"
    if wanted < _MIN:
        raise InvalidParameter(f"client version {text} is too old. Minimum supported API version is "
                               f"{MIN_API_VERSION}, please upgrade your client to a newer version")
    if wanted > _MAX:
        raise InvalidParameter(f"client version {text} is too new. Maximum supported API version is {API_VERSION}")
    return match.group(3), text


MAX_JSON_DEPTH = 100  # Docker's bodies nest a handful of levels; deeper is an attack on the decoder


def decode_json(text: str | bytes, prefix: str = "") -> Any:
    """JSON from a client; malformed or absurdly nested input is a 400, never a RecursionError (500)
    here or in whatever walks the result later."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidParameter(f"{prefix}invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidParameter(f"{prefix}invalid JSON: {exc}") from None
    level: list[Any] = [value]
    for _ in range(MAX_JSON_DEPTH + 1):
        level = [v for item in level if isinstance(item, (dict, list))
                 for v in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return value
    raise InvalidParameter(f"{prefix}invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")


class Request:
    """One parsed request. The body is buffered (`.body`) unless the route streams it (`.stream()`)."""

    def __init__(self, method: str, target: str, headers: Mapping[str, str],
                 reader: asyncio.StreamReader | None = None) -> None:
        self.method = method
        split = urlsplit(target)
        path, self.version = split_version(unquote(split.path))
        self.path = path.rstrip("/") or "/"
        self.query: dict[str, list[str]] = parse_qs(split.query, keep_blank_values=True)
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.reader = reader
        self.body = b""
        self.limit = JSON_LIMIT
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length") or "0"
        if not self._chunked and not length.isdigit():
            raise InvalidParameter(f"invalid Content-Length: {length!r}")
        self._remaining = 0 if self._chunked else int(length)  # Content-Length bytes still unread
        self._received = 0

    # ----- query helpers ------------------------------------------------

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def qbool(self, name: str, default: bool = False) -> bool:
        """Docker's boolean query values: absent -> default; "", 0, false, no -> False."""
        value = self.q(name)
        if value is None:
            return default
        return value.strip().lower() not in ("", "0", "false", "no")

    def qint(self, name: str, default: Any = 0) -> Any:
        value = self.q(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise InvalidParameter(f"invalid value for {name}: {value!r}") from None

    def qjson(self, name: str) -> Any:
        value = self.q(name)
        if not value:
            return None
        return decode_json(value, f"invalid {name} parameter: ")

    def json(self) -> Any:
        """The body as JSON; an empty body is `{}` (Docker treats it as "no options")."""
        if not self.body.strip():
            return {}
        return decode_json(self.body)

    # ----- body ---------------------------------------------------------

    @property
    def body_pending(self) -> bool:
        return self._chunked or self._remaining > 0

    def _count(self, size: int) -> None:
        self._received += size
        if self._received > self.limit:
            raise PayloadTooLarge(f"request body is larger than the limit of {self.limit} bytes")

    async def stream(self) -> AsyncIterator[bytes]:
        """The body as it arrives (tar uploads: load, import, archive), within the route's limit."""
        assert self.reader is not None
        while self._chunked:
            size_line = await self.reader.readline()
            if not size_line:
                raise ConnectionError("client closed during the request body")
            try:
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise InvalidParameter("malformed chunked request body") from None
            if size == 0:  # last chunk, then optional trailers up to a blank line
                while (await self.reader.readline()) not in (*_BLANK, b""):
                    pass
                self._chunked = False
                return
            self._count(size)
            data = await self.reader.readexactly(size)
            await self.reader.readline()
            yield data
        while self._remaining:
            data = await self.reader.read(min(self._remaining, 1 << 20))
            if not data:
                raise ConnectionError("client closed during the request body")
            self._remaining -= len(data)
            self._count(len(data))
            yield data

    async def read_body(self, limit: int | None = None) -> None:
        if limit is not None:
            self.limit = limit
        self.body = b"".join([chunk async for chunk in self.stream()])

    async def drain(self) -> None:
        """Discard whatever body a handler left unread, so keep-alive stays in sync."""
        self.limit = 1 << 62
        async for _ in self.stream():
            pass


class Response:
    """A complete response. `body` may be bytes or any JSON-able object."""

    def __init__(self, status: int = 200, body: Any = b"", content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode() + b"\n"
        self.status, self.body, self.content_type = status, bytes(body), content_type
        self.headers = headers or {}

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(obj).encode() + b"\n")

    @classmethod
    def empty(cls, status: int = 204) -> Response:
        return cls(status, b"", content_type="")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode(), content_type="text/plain; charset=utf-8")

    @classmethod
    def stream(cls, producer: StreamProducer, content_type: str = "application/json") -> StreamResponse:
        return StreamResponse(producer, content_type)

    @classmethod
    def hijack(cls, session: HijackSession, content_type: str = RAW_STREAM) -> Hijack:
        return Hijack(session, content_type)


StreamProducer = Callable[["StreamResponse"], Awaitable[None]]
HijackSession = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class StreamResponse(Response):
    """A chunked 200 response (logs -f, events, stats, pull progress).

    The server sends the head, then awaits `producer(self)`; the producer calls
    `await self.write(data)` as data comes and may `await self.close()` early.
    When the client goes away the producer is cancelled (or its next write raises
    ConnectionError), so an idle `events` stream does not outlive its reader.
    """

    def __init__(self, producer: StreamProducer, content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(200, b"", content_type, headers)
        self.producer = producer
        self._writer: asyncio.StreamWriter | None = None
        self._closed = False

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self._writer is None or self._closed:
            raise ConnectionError("stream is not open")
        if self._writer.is_closing():
            raise ConnectionResetError("client went away")
        self._writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self._writer.drain()

    async def close(self) -> None:
        if self._writer is None or self._closed:
            return
        self._closed = True
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()


class Hijack(Response):
    """Take over the connection: 101 UPGRADED (200 for clients that did not ask), then raw bytes.

    The session gets the raw reader/writer. The reader reaching EOF means the
    client half-closed (stdin done); the writer stays usable until the session
    returns, then the server sends its own EOF and closes.
    """

    def __init__(self, session: HijackSession, content_type: str = RAW_STREAM) -> None:
        super().__init__(101, b"", content_type)
        self.session = session


Handler = Callable[..., Awaitable[Response | None]]


class Route:
    def __init__(self, method: str, pattern: str, handler: Handler, stream_body: bool, max_body: int | None) -> None:
        self.method, self.pattern, self.handler = method, pattern, handler
        self.stream_body, self.max_body = stream_body, max_body
        regex = re.sub(r"\{(\w+)\*\}", r"(?P<\1>.+)", pattern)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        self.regex = re.compile("^" + regex + "$")


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, pattern: str, handler: Handler, stream_body: bool = False,
            max_body: int | None = None) -> None:
        """`{name}` matches one path segment, `{name*}` several (image names hold slashes).

        `stream_body=True` leaves the body unread for the handler (`req.stream()`),
        bounded by `max_body` (default: serve()'s); otherwise the body is buffered
        up to `max_body` (default 16 MiB) before the handler runs.
        """
        self.routes.append(Route(method.upper(), pattern, handler, stream_body, max_body))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """Docker answers an unknown path and a known path with the wrong method alike: 404."""
        for route in self.routes:
            m = route.regex.match(path)
            if m and (route.method == method or (method == "HEAD" and route.method == "GET")):
                return route, m.groupdict()
        raise NotFound("page not found")


def route(router: Router, req: Request) -> tuple[Route | None, dict[str, str]]:
    """The route of a request and its path parameters; None for the built-in /_ping."""
    if req.path == "/_ping" and req.method in ("GET", "HEAD"):
        return None, {}
    return router.match(req.method, req.path)


def _head(status: int, extra: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Api-Version: {API_VERSION}",
             "Ostype: linux", f"Server: {SERVER}", "Docker-Experimental: false"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode(resp: Response, head_only: bool = False, close: bool = False) -> bytes:
    """A complete response as it goes on the wire (HEAD: the head a GET would have)."""
    extra = dict(resp.headers)
    if resp.content_type:
        extra["Content-Type"] = resp.content_type
    if resp.status not in (204, 304):
        extra["Content-Length"] = str(len(resp.body))
    if close:
        extra["Connection"] = "close"
    return _head(resp.status, extra) + (b"" if head_only or resp.status in (204, 304) else resp.body)


def ping() -> Response:
    """/_ping is built in: clients probe it before anything else."""
    return Response(200, b"OK", "text/plain; charset=utf-8",
                    {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"})


def error_response(exc: BaseException) -> Response:
    """Docker's error shape; unexpected exceptions are 500 with their message."""
    if isinstance(exc, CoracleError):
        return Response.json({"message": str(exc)}, status=exc.status)
    return Response.json({"message": str(exc) or type(exc).__name__}, status=500)


class _Protocol(asyncio.StreamReaderProtocol):
    """Notices when the peer stops sending (EOF or reset) without consuming what it sent."""

    def __init__(self, reader: asyncio.StreamReader, callback: Any) -> None:
        super().__init__(reader, callback)
        self.peer_gone = asyncio.Event()

    def eof_received(self) -> bool:
        self.peer_gone.set()
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer_gone.set()
        super().connection_lost(exc)


class Server:
    """Serves one router; one `connection()` task per client."""

    def __init__(self, router: Router, max_body: int = STREAM_LIMIT) -> None:
        self.router = router
        self.max_body = max_body
        self._adopting: set[asyncio.Future[Any]] = set()

    def adopt(self, sock: socket.socket) -> None:
        """Serve a connection accepted elsewhere: by our own accept loop, or handed over by the front process."""
        task = asyncio.ensure_future(asyncio.get_running_loop().connect_accepted_socket(self.protocol, sock))
        self._adopting.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Future[Any]) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("connection lost before it was served: %s", task.exception())

    def protocol(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
        proto: _Protocol

        def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Awaitable[None]:
            return self.connection(r, w, proto.peer_gone)

        proto = _Protocol(reader, connected)
        return proto

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer_gone: asyncio.Event | None = None) -> None:
        try:
            while await self._one(reader, writer, peer_gone or asyncio.Event()):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, OSError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _send(self, writer: asyncio.StreamWriter, resp: Response, head_only: bool = False,
                    close: bool = False) -> None:
        writer.write(encode(resp, head_only, close))
        await writer.drain()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_gone: asyncio.Event) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            head = await _read_head(reader)
            if head is None:
                return False
            method, target, http_version, headers = head
            req = Request(method, target, headers, reader)
        except CoracleError as exc:  # unparseable: answer and close, the stream is out of sync
            await self._refuse(reader, writer, error_response(exc))
            return False
        except ValueError:
            await self._refuse(reader, writer, error_response(InvalidParameter("malformed request")))
            return False
        keep_alive = keep_alive_asked(http_version, headers)
        try:
            route, params = self._route(req)
            if route is not None:
                req.limit = route.max_body or (self.max_body if route.stream_body else JSON_LIMIT)
                if req._remaining > req.limit:  # declared too big: refuse before reading a byte
                    raise PayloadTooLarge(f"request body is larger than the limit of {req.limit} bytes")
                await self._continue(req, writer)
                if not route.stream_body:
                    await req.read_body()
            resp = await self._call(route, req, params)
        except (ConnectionError, asyncio.IncompleteReadError):
            return False
        except Exception as exc:
            if not isinstance(exc, CoracleError):
                log.exception("%s %s failed", method, req.path)
            resp = error_response(exc)
            if isinstance(exc, PayloadTooLarge) or req.body_pending and "expect" in req.headers:
                await self._refuse(reader, writer, resp)  # too much (or unsent) body to skip
                return False
        if isinstance(resp, Hijack):
            await self._hijack(req, resp, reader, writer)
            return False
        if isinstance(resp, StreamResponse):
            return await self._stream(req, resp, writer, peer_gone) and keep_alive
        try:
            await req.drain()
        except PayloadTooLarge:
            return False
        await self._send(writer, resp, head_only=method == "HEAD", close=not keep_alive)
        return keep_alive

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, resp: Response) -> None:
        """Answer and end the connection without reading the request's body.

        Closing a Unix socket that still holds unread input resets it, and the
        client would get ECONNRESET instead of our answer. So: answer, send EOF,
        and keep dropping what the client still sends for a short while.
        """
        await self._send(writer, resp, close=True)
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER
        try:
            while (left := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(reader.read(1 << 20), left):
                    break
        except (TimeoutError, ConnectionError, OSError):
            pass

    def _route(self, req: Request) -> tuple[Route | None, dict[str, str]]:
        return route(self.router, req)

    async def _call(self, route: Route | None, req: Request, params: dict[str, str]) -> Response:
        if route is None:
            return ping()
        resp = await route.handler(req, **params)
        return Response.empty(204) if resp is None else resp

    @staticmethod
    async def _continue(req: Request, writer: asyncio.StreamWriter) -> None:
        """Tell a client waiting on `Expect: 100-continue` to send the body (only once we want it)."""
        if req.headers.get("expect", "").lower() == "100-continue" and req.body_pending:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            del req.headers["expect"]

    async def _stream(self, req: Request, resp: StreamResponse, writer: asyncio.StreamWriter,
                      peer_gone: asyncio.Event) -> bool:
        """Send a chunked response; the producer is cancelled if the client goes away first."""
        await req.drain()
        writer.write(_head(200, {**resp.headers, "Content-Type": resp.content_type, "Transfer-Encoding": "chunked"}))
        if req.method == "HEAD":  # the head says what a GET would stream; no body, so no producer
            await writer.drain()
            return True
        await writer.drain()
        resp._writer = writer
        produce = asyncio.ensure_future(resp.producer(resp))
        gone = asyncio.ensure_future(peer_gone.wait())
        try:
            await asyncio.wait({produce, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not produce.done():
            produce.cancel()
            await asyncio.gather(produce, return_exceptions=True)
            return False
        exc = produce.exception()
        if isinstance(exc, (ConnectionError, OSError)):
            return False
        if exc is not None:  # the head is gone: report inside the stream (Docker's progress shape), then end
            log.error("stream %s %s failed", req.method, req.path, exc_info=exc)
            try:
                await resp.write(json.dumps({"message": str(exc), "errorDetail": {"message": str(exc)},
                                             "error": str(exc)}).encode() + b"\n")
            except (ConnectionError, OSError):
                return False
        try:
            await resp.close()
        except (ConnectionError, OSError):
            return False
        return True

    async def _hijack(self, req: Request, resp: Hijack, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await req.drain()
        asked = (req.headers.get("upgrade", "").lower() == "tcp"
                 or "upgrade" in req.headers.get("connection", "").lower())
        if asked:
            writer.write(_head(101, {"Content-Type": resp.content_type, "Connection": "Upgrade", "Upgrade": "tcp"}))
        else:  # old docker-py: a plain 200, then the raw stream on the same socket
            writer.write(_head(200, {"Content-Type": resp.content_type}))
        await writer.drain()
        try:
            await resp.session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except Exception:
            log.exception("%s %s: hijacked session failed", req.method, req.path)
        finally:
            try:
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
                await writer.drain()
            except (ConnectionError, OSError):
                pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, str, Headers] | None:
    """Request line and headers; None at a clean EOF between requests."""
    try:
        line = await reader.readline()
        while line in _BLANK:
            line = await reader.readline()
    except (asyncio.LimitOverrunError, ValueError):
        raise PayloadTooLarge("request line too long") from None
    if not line:
        return None
    method, target, version = _request_line(line)
    headers = Headers()
    size = 0
    while True:
        try:
            raw = await reader.readline()
        except (asyncio.LimitOverrunError, ValueError):
            raise PayloadTooLarge("request headers too large") from None
        size += len(raw)
        if size > HEADER_LIMIT:
            raise PayloadTooLarge("request headers too large")
        if raw in (*_BLANK, b""):
            break
        _header_line(raw, headers)
    return method, target, version, headers


def parse_head(head: bytes) -> tuple[str, str, str, Headers]:
    """Request line and headers of a complete head (up to and with its blank line), as _read_head reads them."""
    line, *lines = head.split(b"\r\n")
    method, target, version = _request_line(line)
    headers = Headers()
    for raw in lines:
        if raw:
            _header_line(raw, headers)
    return method, target, version, headers


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise InvalidParameter("malformed request line")
    return parts[0].upper(), parts[1], parts[2]


def _header_line(raw: bytes, headers: Headers) -> None:
    name, sep, value = raw.decode("latin-1").partition(":")
    if not sep:
        raise InvalidParameter("malformed header line")
    headers[name.strip()] = value.strip()


def keep_alive_asked(http_version: str, headers: Headers) -> bool:
    connection = headers.get("connection", "").lower()
    if http_version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def _clear_socket_path(unix_path: str) -> None:
    """The socket's directory exists and a socket left by an earlier daemon is gone."""
    os.makedirs(os.path.dirname(unix_path) or ".", exist_ok=True)
    if os.path.lexists(unix_path):
        os.unlink(unix_path)


def listen(unix_path: str, *, mode: int = 0o660, group: str = "") -> socket.socket:
    """The API's listening socket at `unix_path`, `mode` 0660 owned by root:root (or root:`group`).

    Bound in a private directory (0700) beside it, given its owner and mode there, then renamed
    into place: it is never open to everyone, and the umask is left alone. A umask is the whole
    process's: tightened around bind, it gave 0600 to cgroup directories another thread made
    meanwhile (the spare child's, at start-up), and a user-namespaced container could then not
    reach its own cgroup."""
    _clear_socket_path(unix_path)
    private = tempfile.mkdtemp(prefix=".coracle-socket-", dir=os.path.dirname(unix_path) or ".")
    staged = os.path.join(private, "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(staged)
        sock.listen(BACKLOG)
        os.chown(staged, 0, grp.getgrnam(group).gr_gid if group else 0)
        os.chmod(staged, mode)
        os.rename(staged, unix_path)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        os.rmdir(private)
    sock.setblocking(False)
    return sock


async def serve(router: Router, unix_path: str, *, mode: int = 0o660, group: str = "",
                max_body: int = STREAM_LIMIT) -> asyncio.AbstractServer:
    """Listen on `unix_path` (see listen()) and serve every connection in this loop.

    `max_body` bounds streamed request bodies (image load/import, archive
    upload) for routes that do not set their own.
    """
    listener = await asyncio.to_thread(partial(listen, unix_path, mode=mode, group=group))
    server = Server(router, max_body)
    return await asyncio.get_running_loop().create_unix_server(server.protocol, sock=listener, backlog=BACKLOG)
