"""The HTTP/1.1 layer on a real Unix socket: what Docker clients rely on."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from coracle.api.http import (API_VERSION, SERVER, Hijack, Request, Response, Router, StreamResponse, serve)
from coracle.errors import NotFound


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


class Harness:
    """A server on a temporary socket, its loop in a thread, plus what handlers observed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stream_cancelled = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def routes(self) -> Router:
        router = Router()

        async def version(req: Request) -> Response:
            return Response.json({"ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Version": "27.0.0",
                                  "Os": "linux", "Arch": "amd64"})

        async def echo(req: Request, name: str) -> Response:
            return Response(201, {"name": name, "version": req.version, "body": req.json(),
                             "all": req.qbool("all"), "n": req.qint("n", 7), "filters": req.qjson("filters"),
                             "agent": req.headers.get("User-Agent")})

        async def upload(req: Request) -> Response:
            total = 0
            async for chunk in req.stream():
                total += len(chunk)
            return Response.json({"received": total})

        async def boom(req: Request) -> Response:
            raise RuntimeError("kaboom")

        async def missing(req: Request, id: str) -> Response:
            raise NotFound(f"No such container: {id}")

        async def nothing(req: Request) -> None:
            return None

        async def ticks(req: Request) -> StreamResponse:
            async def produce(out: StreamResponse) -> None:
                try:
                    for i in range(int(req.q("n") or "1000000")):
                        await out.write(b"tick %d\n" % i)
                        await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    self.stream_cancelled.set()
                    raise

            return StreamResponse(produce, "text/plain")

        async def idle(req: Request) -> StreamResponse:
            async def produce(out: StreamResponse) -> None:
                try:
                    await asyncio.sleep(3600)  # like `events` with nothing happening
                except asyncio.CancelledError:
                    self.stream_cancelled.set()
                    raise

            return Response.stream(produce)

        async def attach(req: Request) -> Hijack:
            async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                data = await reader.read()  # until the client half-closes
                writer.write(b"got:" + data)
                for i in range(3):  # output keeps flowing after stdin EOF
                    await asyncio.sleep(0.02)
                    writer.write(b" after-eof-%d" % i)
                    await writer.drain()

            return Hijack(session, "application/vnd.docker.raw-stream")

        router.add("GET", "/version", version)
        router.add("POST", "/echo/{name*}", echo)
        router.add("POST", "/upload", upload, stream_body=True, max_body=1000)
        router.add("GET", "/boom", boom)
        router.add("GET", "/containers/{id}/json", missing)
        router.add("POST", "/nothing", nothing)
        router.add("GET", "/ticks", ticks)
        router.add("GET", "/idle", idle)
        router.add("POST", "/attach", attach)
        return router

    def start(self) -> None:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(serve(self.routes(), self.path), self.loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def conn(self) -> UnixConnection:
        return UnixConnection(self.path)

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
             ) -> tuple[int, http.client.HTTPResponse, bytes]:
        conn = self.conn()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, resp, data

    def raw(self, data: bytes) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(self.path)
        sock.sendall(data)
        return sock


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


@pytest.fixture
def srv(tmp_path: Any) -> Iterator[Harness]:
    h = Harness(str(tmp_path / "api.sock"))
    h.start()
    yield h
    h.stop()


def test_socket_is_0660_root(srv: Harness) -> None:
    st = os.stat(srv.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)


@pytest.mark.root  # the socket is chowned to root
def test_the_socket_is_made_without_touching_the_process_umask(tmp_path: Any, monkeypatch: Any) -> None:
    """The umask is the whole process's: changed around bind, it gave 0600 to the cgroup directories
    another thread of the daemon made meanwhile (then a user-namespaced container could not reach its
    own cgroup). The socket is made private another way, and nothing is left beside it."""
    from coracle.api import http as api_http

    def no_umask(mask: int) -> int:
        raise AssertionError(f"umask({mask:o}) called while the daemon's other threads run")

    monkeypatch.setattr(api_http.os, "umask", no_umask)
    sock = api_http.listen(str(tmp_path / "api.sock"))
    try:
        st = os.stat(tmp_path / "api.sock")
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert sorted(os.listdir(tmp_path)) == ["api.sock"]
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "api.sock"))  # renamed into place, still the listening socket
        client.close()
    finally:
        sock.close()


def test_every_response_carries_docker_headers(srv: Harness) -> None:
    for path in ("/_ping", "/version", "/no/such/thing"):
        _, resp, _ = srv.call("GET", path)
        assert resp.getheader("Api-Version") == "1.47"
        assert resp.getheader("Ostype") == "linux"
        assert resp.getheader("Server") == SERVER == "Docker/27.0.0-coracle (linux)"
        assert resp.getheader("Docker-Experimental") == "false"


def test_ping_get_and_head(srv: Harness) -> None:
    status, resp, body = srv.call("GET", "/_ping")
    assert (status, body) == (200, b"OK")
    assert (resp.getheader("Cache-Control") or "").startswith("no-cache")
    assert resp.getheader("Pragma") == "no-cache"
    status, resp, body = srv.call("HEAD", "/_ping")
    assert (status, body) == (200, b"")
    assert resp.getheader("Content-Length") == "2"
    status, _, body = srv.call("GET", "/v1.41/_ping")
    assert (status, body) == (200, b"OK")


def test_version_prefixes(srv: Harness) -> None:
    for prefix, version in (("", "1.47"), ("/v1.24", "1.24"), ("/v1.41", "1.41"), ("/v1.47", "1.47")):
        status, _, body = srv.call("POST", prefix + "/echo/library/busybox", body=b"{}")
        assert status == 201
        assert json.loads(body)["version"] == version
        assert json.loads(body)["name"] == "library/busybox"


def test_too_old_and_too_new_versions_are_refused_with_dockers_words(srv: Harness) -> None:
    status, _, body = srv.call("GET", "/v1.12/version")
    assert status == 400
    assert json.loads(body) == {"message": "client version 1.12 is too old. Minimum supported API version is 1.24, "
                                           "please upgrade your client to a newer version"}
    status, _, body = srv.call("GET", "/v1.99/version")
    assert status == 400
    assert "client version 1.99 is too new" in json.loads(body)["message"]


def test_query_and_headers_helpers(srv: Harness) -> None:
    status, _, body = srv.call("POST", "/echo/x?all=1&n=3&filters=%7B%22status%22%3A%5B%22running%22%5D%7D",
                               body=b'{"Image": "busybox"}', headers={"USER-AGENT": "Docker-Client/28.2.2"})
    assert status == 201
    assert json.loads(body) == {"name": "x", "version": "1.47", "body": {"Image": "busybox"}, "all": True,
                                "n": 3, "filters": {"status": ["running"]}, "agent": "Docker-Client/28.2.2"}
    _, _, body = srv.call("POST", "/echo/x?all=0", body=b"")
    assert json.loads(body)["all"] is False and json.loads(body)["n"] == 7 and json.loads(body)["body"] == {}


def test_error_shapes(srv: Harness) -> None:
    status, resp, body = srv.call("GET", "/containers/foo/json")
    assert status == 404 and json.loads(body) == {"message": "No such container: foo"}
    assert resp.getheader("Content-Type") == "application/json"
    status, _, body = srv.call("GET", "/nope")
    assert status == 404 and json.loads(body) == {"message": "page not found"}
    status, _, body = srv.call("DELETE", "/version")  # known path, wrong method: Docker says 404 too
    assert status == 404 and json.loads(body) == {"message": "page not found"}
    status, _, body = srv.call("POST", "/echo/x", body=b'{"Image": ')
    assert status == 400 and json.loads(body)["message"].startswith("invalid JSON: ")
    status, _, body = srv.call("POST", "/echo/x?filters=%7Bnope", body=b"{}")
    assert status == 400 and "invalid filters parameter" in json.loads(body)["message"]
    status, _, body = srv.call("POST", "/nothing")
    assert status == 204 and body == b""


def test_handler_exception_is_500_and_server_survives(srv: Harness, caplog: Any) -> None:
    conn = srv.conn()
    conn.request("GET", "/boom")
    resp = conn.getresponse()
    assert resp.status == 500 and json.loads(resp.read()) == {"message": "kaboom"}
    conn.request("GET", "/_ping")  # same keep-alive connection still works
    assert conn.getresponse().read() == b"OK"
    conn.close()
    assert any("kaboom" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert srv.call("GET", "/_ping")[2] == b"OK"


def test_keep_alive_serves_many_requests_on_one_connection(srv: Harness) -> None:
    conn = srv.conn()
    for i in range(5):
        conn.request("POST", f"/echo/{i}", body=json.dumps({"i": i}))
        assert json.loads(conn.getresponse().read())["body"] == {"i": i}
    conn.close()


def test_chunked_request_body(srv: Harness) -> None:
    sock = srv.raw(b"POST /v1.47/echo/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n"
                   b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # pipelined after it
    out = read_all(sock)
    sock.close()
    assert out.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b'"body": {"a": 1}' in out
    assert out.rstrip().endswith(b"OK")


def test_chunked_upload_to_streaming_route(srv: Harness) -> None:
    conn = srv.conn()
    conn.request("POST", "/upload", body=iter([b"a" * 300, b"b" * 300]), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    assert json.loads(conn.getresponse().read()) == {"received": 600}
    conn.close()


def test_expect_100_continue(srv: Harness) -> None:
    sock = srv.raw(b"POST /echo/e HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nExpect: 100-continue\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(b'{"x": 1}')
    reply = sock.recv(65536)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 201") and b'"body": {"x": 1}' in reply


def test_body_limits_are_413_in_dockers_shape(srv: Harness) -> None:
    status, _, body = srv.call("POST", "/upload", body=b"x" * 2000)  # route limit 1000, declared length
    assert status == 413 and "larger than the limit of 1000 bytes" in json.loads(body)["message"]
    conn = srv.conn()
    conn.request("POST", "/upload", body=iter([b"y" * 600] * 3), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 413 and "message" in json.loads(resp.read())
    conn.close()
    sock = srv.raw(b"POST /echo/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % ((16 << 20) + 1))
    reply = read_all(sock)  # JSON routes: 16 MiB; answered without waiting for the body
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413 ") and b"limit of 16777216 bytes" in reply
    sock = srv.raw(b"POST /echo/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    try:  # a chunked JSON body over the limit is cut off as it arrives
        for _ in range(17):
            sock.sendall(b"100000\r\n" + b" " * (1 << 20) + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: expected
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert srv.call("GET", "/_ping")[2] == b"OK"


def test_malformed_request_line_is_400(srv: Harness) -> None:
    sock = srv.raw(b"HELLO\r\n\r\n")
    out = read_all(sock)
    sock.close()
    assert out.startswith(b"HTTP/1.1 400 ") and b"malformed request line" in out


def test_stream_response_is_chunked(srv: Harness) -> None:
    status, resp, body = srv.call("GET", "/ticks?n=3")
    assert status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert body == b"tick 0\ntick 1\ntick 2\n"


def test_client_disconnecting_mid_stream_stops_the_producer(srv: Harness) -> None:
    sock = srv.raw(b"GET /ticks HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"tick 0" in sock.recv(4096) + sock.recv(4096)
    sock.close()
    assert srv.stream_cancelled.wait(10)
    assert srv.call("GET", "/_ping")[2] == b"OK"


def test_idle_stream_is_cancelled_when_the_client_leaves(srv: Harness) -> None:
    sock = srv.raw(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
    sock.close()
    assert srv.stream_cancelled.wait(10)  # no write ever happened, yet it is gone


def test_hijack_with_half_close(srv: Harness) -> None:
    sock = srv.raw(b"POST /v1.47/attach HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                   b"Content-Length: 0\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n")
    assert b"Content-Type: application/vnd.docker.raw-stream\r\n" in head
    assert b"Connection: Upgrade\r\n" in head and b"Upgrade: tcp\r\n" in head
    sock.sendall(b"hello stdin")
    sock.shutdown(socket.SHUT_WR)  # stdin EOF
    out = read_all(sock)
    sock.close()
    assert out == b"got:hello stdin after-eof-0 after-eof-1 after-eof-2"


def test_hijack_without_upgrade_answers_200_then_raw(srv: Harness) -> None:
    sock = srv.raw(b"POST /attach HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)
    out = read_all(sock)
    sock.close()
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"vnd.docker.raw-stream" in head
    assert rest == b"got: after-eof-0 after-eof-1 after-eof-2"


def test_client_vanishing_mid_request_body(srv: Harness) -> None:
    sock = srv.raw(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\nxxxx")
    sock.close()
    time.sleep(0.1)
    assert srv.call("GET", "/_ping")[2] == b"OK"


def test_docker_sdk_pings_and_negotiates(srv: Harness) -> None:
    docker = pytest.importorskip("docker")
    client = docker.APIClient(base_url="unix://" + srv.path, version="auto", timeout=10)
    assert client.api_version == "1.47"
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.47"
    client.close()


def test_head_on_a_streaming_route_sends_only_the_head(srv: Harness) -> None:
    """HEAD never carries a body, even where GET would stream one (logs, stats, export)."""
    sock = srv.raw(b"HEAD /ticks?n=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /ticks?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = read_all(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200")  # the next answer follows at once: nothing after HEAD's head
    assert b"tick 1" in rest
