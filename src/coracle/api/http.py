"""HTTP/1.1 for the Engine API on a Unix socket, on asyncio, with Docker's hijack.

Why not a framework: `docker attach`/`exec` upgrade the connection to a raw
two-way stream and half-close their side at stdin EOF while output must keep
flowing; that needs the transport under our control. The protocol subset is
small: request line, headers, Content-Length or chunked bodies, keep-alive,
chunked streaming responses, and the 101 upgrade.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import re
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from coracle import __version__
from coracle.errors import CoracleError, InvalidParameter, NotFound, PayloadTooLarge

log = logging.getLogger("coracle.api")

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
_MIN = tuple(int(x) for x in MIN_API_VERSION.split("."))
DOCKER_COMPAT = "27.0.0"  # the Docker release whose API level we serve
SERVER = f"Docker/{DOCKER_COMPAT} (linux) coracle/{__version__}"
JSON_LIMIT = 16 << 20
VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")
REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error",
           101: "UPGRADED"}


class Request:
    """One parsed request; the body is buffered unless the route streams it."""

    def __init__(self, method: str, target: str, headers: dict[str, str], reader: asyncio.StreamReader) -> None:
        self.method = method
        split = urlsplit(target)
        path = unquote(split.path)
        self.version = API_VERSION
        match = VERSION_PREFIX.match(path)
        if match:
            major, minor = int(match.group(1)), int(match.group(2))
            if (major, minor) < _MIN:
                raise InvalidParameter(
                    f"client version {major}.{minor} is too old. Minimum supported API version is "
                    f"{MIN_API_VERSION}, please upgrade your client to a newer version")
            self.version = f"{major}.{minor}"
            path = match.group(3)
        self.path = path.rstrip("/") or "/"
        self.query: dict[str, list[str]] = parse_qs(split.query, keep_blank_values=True)
        self.headers = headers
        self.reader = reader
        self.body = b""
        self._remaining: int | None = None  # bytes of a Content-Length body still unread
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        if not self._chunked:
            self._remaining = int(headers.get("content-length") or 0)

    # ----- query helpers ------------------------------------------------

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def qbool(self, name: str, default: bool = False) -> bool:
        value = self.q(name)
        if value is None:
            return default
        return value.lower() not in ("", "0", "false", "no")

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
        try:
            return json.loads(value)
        except ValueError as exc:
            raise InvalidParameter(f"invalid {name} parameter: {exc}") from None

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise InvalidParameter(f"invalid JSON: {exc}") from None

    # ----- body ---------------------------------------------------------

    async def stream(self) -> AsyncIterator[bytes]:
        """The body as it arrives (tar uploads: load, import, archive)."""
        if self._chunked:
            while True:
                size_line = await self.reader.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    self._chunked = False
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readline()
                yield data
        else:
            while self._remaining:
                data = await self.reader.read(min(self._remaining, 1 << 20))
                if not data:
                    raise ConnectionError("client closed during the request body")
                self._remaining -= len(data)
                yield data

    async def read_body(self, limit: int) -> None:
        chunks, total = [], 0
        async for chunk in self.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        self.body = b"".join(chunks)

    async def drain(self) -> None:
        """Discard whatever body a handler left unread, so keep-alive stays in sync."""
        async for _ in self.stream():
            pass


StreamProducer = Callable[["StreamWriter"], Awaitable[None]]
HijackSession = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Response:
    def __init__(self, status: int = 200, body: bytes = b"", content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = headers or {}
        self.producer: StreamProducer | None = None
        self.session: HijackSession | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> "Response":
        return cls(status, json.dumps(obj).encode() + b"\n")

    @classmethod
    def empty(cls, status: int = 204) -> "Response":
        return cls(status, b"", content_type="")

    @classmethod
    def text(cls, text: str, status: int = 200) -> "Response":
        return cls(status, text.encode(), content_type="text/plain; charset=utf-8")

    @classmethod
    def stream(cls, producer: StreamProducer, content_type: str = "application/json") -> "Response":
        """A chunked response written by `producer` (logs -f, events, pull progress)."""
        resp = cls(200, b"", content_type)
        resp.producer = producer
        return resp

    @classmethod
    def hijack(cls, session: HijackSession, content_type: str) -> "Response":
        """Answer 101 UPGRADED (or 200 for clients that did not ask) and hand over the socket."""
        resp = cls(101, b"", content_type)
        resp.session = session
        return resp


class StreamWriter:
    """Chunked transfer encoding for a streaming response."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def write(self, data: bytes) -> None:
        if data:
            self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


Handler = Callable[..., Awaitable[Response]]


class Route:
    def __init__(self, method: str, pattern: str, handler: Handler, stream_body: bool) -> None:
        self.method, self.handler, self.stream_body = method, handler, stream_body
        regex = re.sub(r"\{(\w+)\*\}", r"(?P<\1>.+)", pattern)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        self.regex = re.compile("^" + regex + "$")


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, pattern: str, handler: Handler, stream_body: bool = False) -> None:
        """`{name}` matches one path segment, `{name*}` several (image names hold slashes)."""
        self.routes.append(Route(method, pattern, handler, stream_body))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = False
        for route in self.routes:
            m = route.regex.match(path)
            if m:
                if route.method == method or (method == "HEAD" and route.method == "GET"):
                    return route, m.groupdict()
                allowed = True
        if allowed:
            raise NotFound("page not found")  # Docker answers unknown method/path pairs like unknown paths
        raise NotFound("page not found")


def _headers(status: int, extra: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Api-Version: {API_VERSION}",
             "Ostype: linux", f"Server: {SERVER}", "Docker-Experimental: false"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    line = await reader.readline()
    while line in (b"\r\n", b"\n"):
        line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise InvalidParameter("malformed request line")
    headers: dict[str, str] = {}
    size = 0
    while True:
        raw = await reader.readline()
        size += len(raw)
        if size > 64 * 1024:
            raise PayloadTooLarge("request headers too large")
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return parts[0].upper(), parts[1], headers


async def _send(writer: asyncio.StreamWriter, resp: Response, head_only: bool = False) -> None:
    extra = dict(resp.headers)
    if resp.content_type:
        extra["Content-Type"] = resp.content_type
    if resp.status not in (204, 304):
        extra["Content-Length"] = str(len(resp.body))
    writer.write(_headers(resp.status, extra) + (b"" if head_only else resp.body))
    await writer.drain()


def _error(exc: BaseException) -> Response:
    if isinstance(exc, CoracleError):
        return Response.json({"message": str(exc)}, status=exc.status)
    return Response.json({"message": f"{type(exc).__name__}: {exc}"}, status=500)


class Server:
    def __init__(self, router: Router) -> None:
        self.router = router

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            head = await _read_head(reader)
        except CoracleError as exc:
            await _send(writer, _error(exc))
            return False
        if head is None:
            return False
        method, target, headers = head
        try:
            req = Request(method, target, headers, reader)
        except CoracleError as exc:
            await _send(writer, _error(exc))
            return False
        if req.path == "/_ping":
            await req.drain()
            resp = Response.text("OK")
            resp.headers.update({"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"})
            await _send(writer, resp, head_only=method == "HEAD")
            return True
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            route, params = self.router.match(method, req.path)
            if not route.stream_body:
                await req.read_body(JSON_LIMIT)
            resp = await route.handler(req, **params)
        except (ConnectionError, asyncio.IncompleteReadError):
            return False
        except Exception as exc:
            if not isinstance(exc, CoracleError):
                log.exception("%s %s failed", method, req.path)
            resp = _error(exc)
            try:
                await req.drain()
            except Exception:
                await _send(writer, resp)
                return False
            await _send(writer, resp, head_only=method == "HEAD")
            return True
        if resp.session is not None:
            await self._hijack(req, resp, reader, writer)
            return False
        if resp.producer is not None:
            return await self._stream(resp, writer)
        await req.drain()
        await _send(writer, resp, head_only=method == "HEAD")
        return headers.get("connection", "").lower() != "close"

    async def _stream(self, resp: Response, writer: asyncio.StreamWriter) -> bool:
        writer.write(_headers(200, {"Content-Type": resp.content_type, "Transfer-Encoding": "chunked"}))
        await writer.drain()
        out = StreamWriter(writer)
        try:
            await resp.producer(out)  # type: ignore[misc]
        except (ConnectionError, asyncio.CancelledError):
            return False
        except Exception as exc:  # headers are gone: report inside the stream, then end it
            log.exception("stream failed")
            await out.write(json.dumps({"message": str(exc), "error": str(exc)}).encode() + b"\n")
        await out.close()
        return True

    async def _hijack(self, req: Request, resp: Response, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        upgrade = req.headers.get("upgrade", "").lower() == "tcp" or "upgrade" in req.headers.get("connection", "").lower()
        if upgrade:
            writer.write(_headers(101, {"Content-Type": resp.content_type, "Connection": "Upgrade",
                                        "Upgrade": "tcp"}))
        else:
            writer.write(_headers(200, {"Content-Type": resp.content_type}))
        await writer.drain()
        try:
            await resp.session(reader, writer)  # type: ignore[misc]
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            try:
                if writer.can_write_eof():
                    writer.write_eof()
                await writer.drain()
            except (ConnectionError, OSError):
                pass


async def serve(router: Router, unix_path: str, *, group: str = "") -> asyncio.AbstractServer:
    """Listen on `unix_path`, mode 0660, owned by root (and `group` if given)."""
    os.makedirs(os.path.dirname(unix_path) or ".", exist_ok=True)
    if os.path.exists(unix_path):
        os.unlink(unix_path)
    server = await asyncio.start_unix_server(Server(router).handle, path=unix_path, limit=1 << 20, backlog=1024)
    os.chmod(unix_path, 0o660)
    os.chown(unix_path, 0, grp.getgrnam(group).gr_gid if group else 0)
    return server
