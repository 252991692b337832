"""The API's front: a process of its own that accepts every connection and answers the reads.

Why a process: `docker ps` must answer at once while other clients create and
start containers. The daemon answers reads from memory on its event loop, but
that loop shares the interpreter lock with the lifecycle threads: during a
burst of 200 starts by 16 clients a 200-row `ps` (1.1 ms of Python) took
8 / 29 / 46 ms (p50 / p95 / p99), each of its system calls waiting up to a
switch interval for the lock. A process of its own has a lock of its own (the
resolver is one for the same reason, see network/dns.py). It also asks for a CPU
ahead of the lifecycle work (nice -10, see _raise_priority): a read costs ~1 ms
of CPU, and on a machine loaded by others it otherwise waits its fair turn
behind every busy session (same burst at a load average of 25: p50 / p95 / p99
11-13 / 34-48 / 53-75 ms at the usual priority, 3.4 / 11-12 / 18 ms raised).

What it answers: GET and HEAD of /_ping, /containers/json (every filter; not
`size`, which measures the disk) and /containers/{id}/json by full id or name
(not `size`), rendered by the daemon's own code (render.py, filters.py) from
the records the daemon committed to the state database, read through a WAL
reader (store.db.Reader), which never waits for the daemon's writers. The
daemon answers a write only after its commit, so a client's next read sees
what it changed. The one field of a container that lives only in the daemon's
memory is inspect's ExecIDs: the daemon names the containers that have exec
instances over the channel before it answers the request that made one, and
their inspects go to the daemon.

Everything else goes to the daemon: another request, a request with a body, a
head not yet wholly in the socket, any error (the daemon words it), and the rest
of that connection. The front only peeks at a request (MSG_PEEK) until it knows
it will answer it, so the connection it passes (SCM_RIGHTS over the channel, a
SOCK_SEQPACKET socket pair) carries every byte the client sent, unread.

Its life: the daemon makes the listening socket and accepts on it itself until
the front says it is ready, and again from the moment the front is gone, while
it starts a new one: the API stays up whatever happens to the front. The front
exits when the channel closes (the daemon stopped or died).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from coracle.api import filters as flt
from coracle.api import render
from coracle.api.http import (HEADER_LIMIT, Request, Response, Router, Server, encode, keep_alive_asked, parse_head,
                              ping, route)
from coracle.engine.container import Container
from coracle.store.db import Reader

log = logging.getLogger("coracle.front")

READY, CONNECTION, PONG = b"ready", b"conn", b"pong"  # front -> daemon messages
HEARTBEAT = 2.0  # seconds between the daemon's pings of the front
HUNG = 10.0  # seconds without a pong after which a front is taken for hung and replaced
RESPAWN_DELAY = 1.0  # seconds before replacing a front that died young (a crash loop must not spin)
YOUNG = 5.0  # seconds: a front that dies sooner is replaced after RESPAWN_DELAY
PRIORITY = -10  # nice value: a read waits for a CPU behind less (see _raise_priority)


class HandOver(Exception):
    """The daemon must answer this request (the front cannot answer it exactly)."""


class StoredContainers:
    """The container records as the daemon last committed them, each typed once per change."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self._version: int | None = None
        self._typed: dict[str, tuple[str, Container]] = {}  # id -> (stored body, typed record)
        self._names: dict[str, str] = {}

    def _refresh(self) -> None:
        version = self.reader.version()
        if version == self._version:
            return
        typed = {}
        for cid, body in self.reader.documents("container"):
            known = self._typed.get(cid)
            typed[cid] = known if known is not None and known[0] == body else (
                body, Container.decode(body))
        self._typed, self._names = typed, {c.name: cid for cid, (_, c) in typed.items()}
        self._version = version

    def containers(self) -> list[Container]:
        """Every record, oldest first (the daemon's order): shared and read-only."""
        self._refresh()
        return [c for _, c in self._typed.values()]

    def container(self, ref: str) -> Container:
        """By full id or name; a prefix, or no such container, is the daemon's to resolve or refuse."""
        self._refresh()
        cid = ref if ref in self._typed else self._names.get("/" + ref.lstrip("/"))
        if cid is None:
            raise HandOver(ref)
        return self._typed[cid][1]


class _Front:
    """The process: accepts, peeks, answers or hands over."""

    def __init__(self, listener: socket.socket, channel: socket.socket, records: StoredContainers) -> None:
        self.listener, self.channel, self.records = listener, channel, records
        self.rows = render.SummaryRows()
        self.with_execs: set[str] = set()
        self.router = Router()
        self.router.add("GET", "/containers/json", self.list_)
        self.router.add("GET", "/containers/{id}/json", self.inspect)
        self.done = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def list_(self, req: Request) -> Response:
        if req.qbool("size"):
            raise HandOver("size")
        every = self.records.containers()
        return Response(200, self.rows.listing(flt.listed(req, every), every))

    async def inspect(self, req: Request, id: str) -> Response:
        c = self.records.container(id)
        if req.qbool("size") or c.id in self.with_execs:
            raise HandOver(id)
        return Response.json(render.inspect(c, [], req.version))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.channel.fileno(), self._read_channel)
        self.channel.send(READY)
        accepting = asyncio.ensure_future(self._accept())
        await self.done.wait()
        accepting.cancel()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.listener)
            except OSError as exc:  # out of descriptors: the daemon accepts meanwhile
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _read_channel(self) -> None:
        """The daemon's news (containers that have exec instances); its end closing ends us."""
        while True:
            try:
                message = self.channel.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                asyncio.get_running_loop().remove_reader(self.channel.fileno())
                self.done.set()
                return
            news = json.loads(message)
            self.with_execs.update(news.get("execs", ()))
            self.with_execs.difference_update(news.get("gone", ()))
            if "ping" in news:
                with contextlib.suppress(OSError):  # a full channel: the daemon's watchdog decides
                    self.channel.send(PONG)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await _ready(conn)
                peeked = conn.recv(HEADER_LIMIT, socket.MSG_PEEK)
                if not peeked:
                    return
                end = peeked.find(b"\r\n\r\n")
                answer = await self._answer(peeked[:end]) if end > 0 else None
                if answer is None:
                    await self._hand_over(conn)
                    return
                data, keep = answer
                conn.recv(end + 4, socket.MSG_WAITALL)  # the head we answered, already in the socket
                await loop.sock_sendall(conn, data)
                if not keep:
                    return
        except OSError:
            return
        finally:
            conn.close()  # handed over, the daemon's copy keeps the connection open

    async def _answer(self, head: bytes) -> tuple[bytes, bool] | None:
        """The encoded answer and whether the connection stays open, or None: the daemon's."""
        self._read_channel()  # news sent before the client's request was are applied before it is answered
        try:
            method, target, version, headers = parse_head(head)
            if (method not in ("GET", "HEAD") or headers.get("content-length", "0") != "0"
                    or any(h in headers for h in ("transfer-encoding", "expect", "upgrade"))):
                return None
            req = Request(method, target, headers)
            found, params = route(self.router, req)
            resp = ping() if found is None else await found.handler(req, **params)
        except HandOver:
            return None
        except Exception as exc:  # the daemon answers it, errors worded its way included
            log.debug("handed over %r: %s", head[:80], exc)
            return None
        assert resp is not None
        keep = keep_alive_asked(version, headers)
        return encode(resp, head_only=method == "HEAD", close=not keep), keep

    async def _hand_over(self, conn: socket.socket) -> None:
        """Pass the connection, unread, to the daemon (unless the channel is gone: then we are ending)."""
        while True:
            try:
                socket.send_fds(self.channel, [CONNECTION], [conn.fileno()])
                return
            except BlockingIOError:
                await _ready(self.channel, writing=True)
            except OSError:
                self.done.set()
                return


async def _ready(sock: socket.socket, writing: bool = False) -> None:
    """Until the socket can be read (or written) without blocking."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    watch, unwatch = (loop.add_writer, loop.remove_writer) if writing else (loop.add_reader, loop.remove_reader)
    watch(sock.fileno(), _wake, ready)
    try:
        await ready
    finally:
        unwatch(sock.fileno())


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


# ----- the daemon's side -------------------------------------------------------


class Front:
    """Starts the front process, serves the connections it hands over, accepts while it is away.

    The daemon's event loop owns everything here except `watch`, which engine
    threads call through the event bus.
    """

    def __init__(self, server: Server, listener: socket.socket, state_db: str) -> None:
        self.server, self.listener, self.state_db = server, listener, state_db
        self._lock = threading.Lock()  # the channel and the containers with execs, between threads
        self._with_execs: set[str] = set()
        self._channel: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._accepting = False
        self._closed = False
        self._started = 0.0  # when the current front was started
        self._replacing: asyncio.Future[None] | None = None
        self._pinged: float | None = None  # when the unanswered ping was sent
        self._watchdog: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self._accept(True)
        await self._spawn()
        self._watchdog = asyncio.ensure_future(self._watch_front())

    async def _watch_front(self) -> None:
        """Replace a front that is alive but no longer answers (its accept loop would be the API's end).

        A ping unanswered for HUNG seconds kills it; its channel then closes and
        `_lost` accepts here and starts another. Ticks that come late (this loop
        was busy or stopped) judge nothing: the front had no fair chance to answer.
        """
        last = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT)
            now, late = time.monotonic(), time.monotonic() - last > 2 * HEARTBEAT
            last = now
            with self._lock:
                channel, process = self._channel, self._process
            if channel is None or process is None or self._accepting:  # none, or not ready: we accept
                self._pinged = None
                continue
            if self._pinged is not None and now - self._pinged > HUNG and not late:
                log.warning("front process %d did not answer for %.0f s: replacing it", process.pid,
                            now - self._pinged)
                process.kill()
                self._pinged = None
                continue
            if self._pinged is None:
                with contextlib.suppress(OSError):
                    channel.send(b'{"ping": 1}')
                    self._pinged = now

    def watch(self, event: dict[str, Any]) -> None:
        """An event bus watcher: a container with an exec instance is inspected by the daemon from now on
        (its ExecIDs are known only here), until it is removed (then it leaves both sets: they do not grow
        with every container ever exec'd into, healthchecked ones included). Sent before the exec's create is
        answered; a front that cannot take it is killed, so that it never answers from what it was not told."""
        if event["Type"] != "container":
            return
        cid, action = event["Actor"]["ID"], event["Action"]
        with self._lock:
            if action == "destroy" and cid in self._with_execs:  # gone: nothing of it to answer either way
                self._with_execs.discard(cid)
                news = {"gone": [cid]}
            elif action.startswith("exec_create") and cid not in self._with_execs:
                self._with_execs.add(cid)
                news = {"execs": [cid]}
            else:
                return
            if self._channel is None:
                return
            try:
                self._channel.send(json.dumps(news).encode())
            except OSError as exc:
                log.warning("front process not listening (%s): replacing it", exc)
                if self._process is not None:
                    self._process.kill()

    async def close(self) -> None:
        self._closed = True
        for task in (self._replacing, self._watchdog):
            if task is not None:
                task.cancel()
        with self._lock:
            channel, process, self._channel, self._process = self._channel, self._process, None, None
        if channel is not None:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            channel.close()  # the front exits when its channel closes
        if process is not None:
            await asyncio.to_thread(_reap, process)
        self._accept(False)
        self.listener.close()

    def _accept(self, on: bool) -> None:
        loop = asyncio.get_running_loop()
        if on and not self._accepting:
            loop.add_reader(self.listener.fileno(), self._take)
        elif not on and self._accepting:
            loop.remove_reader(self.listener.fileno())
        self._accepting = on

    def _take(self) -> None:
        for _ in range(64):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            self.server.adopt(conn)

    async def _spawn(self) -> None:
        try:
            channel = await asyncio.to_thread(self._launch)
        except OSError as exc:
            log.error("cannot start the front process (%s): the daemon accepts alone", exc)
            self._replacing = asyncio.ensure_future(self._respawn(None, time.monotonic()))
            return
        asyncio.get_running_loop().add_reader(channel.fileno(), self._read_channel, channel)

    def _launch(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "coracle.api.front", str(self.listener.fileno()), str(theirs.fileno()),
                 self.state_db],
                pass_fds=[self.listener.fileno(), theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        with self._lock:  # what it must know before it answers anything
            ours.send(json.dumps({"execs": sorted(self._with_execs)}).encode())
            self._channel, self._process = ours, process
        self._started = time.monotonic()
        return ours

    def _read_channel(self, channel: socket.socket) -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(channel, 64, 16)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            for fd in fds:
                conn = socket.socket(fileno=fd)
                conn.setblocking(False)
                self.server.adopt(conn)
            if message == READY:
                self._accept(False)
            elif message == PONG:
                self._pinged = None
            elif not message:
                self._lost(channel)
                return

    def _lost(self, channel: socket.socket) -> None:
        """The front is gone: accept here at once, and start a new one."""
        asyncio.get_running_loop().remove_reader(channel.fileno())
        channel.close()
        self._accept(True)
        with self._lock:
            process, self._channel, self._process = self._process, None, None
        self._pinged = None
        if not self._closed:
            self._replacing = asyncio.ensure_future(self._respawn(process, self._started))

    async def _respawn(self, process: subprocess.Popen[bytes] | None, started: float) -> None:
        if process is not None:
            await asyncio.to_thread(_reap, process)
            log.warning("front process exited with %s: starting a new one", process.returncode)
        if time.monotonic() - started < YOUNG:
            await asyncio.sleep(RESPAWN_DELAY)
        await self._spawn()


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _raise_priority() -> None:
    """Ahead of the lifecycle work for a CPU (nice PRIORITY), in its own cgroup or session's autogroup
    (the kernel shares a CPU between sessions first, and the front leads a session of its own); where
    we may not (rootless), it runs at the usual priority."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as autogroup:
        autogroup.write(str(PRIORITY))


def main() -> None:
    """`python -m coracle.api.front LISTENER_FD CHANNEL_FD STATE_DB`: the front process (see the module)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s coracle-front: %(message)s")
    _raise_priority()
    listener = socket.socket(fileno=int(sys.argv[1]))
    channel = socket.socket(fileno=int(sys.argv[2]))
    channel.setblocking(False)
    records = StoredContainers(Reader(sys.argv[3]))
    asyncio.run(_Front(listener, channel, records).run())
    os._exit(0)  # connections still open close with the process


if __name__ == "__main__":
    main()
