"""Published ports on IPv6 host addresses for containers with no IPv6 address: one small relay process.

Why it exists: a published port is a DNAT element in nftables (published.py),
and nftables translates within one address family only, so `-p 8080:80` could
not answer on [::]:8080 for an IPv4-only container, and `curl
http://[::1]:8080` (or any client resolving localhost to ::1) failed where
Docker's userland proxy answers. For exactly those mappings (host address
IPv6, container address IPv4) this process holds the listening sockets and
relays TCP connections and UDP datagrams to the container's IPv4 address.

Choices and why:

- One process for every such port, not one per port (docker-proxy's way): it
  waits in a single epoll loop, so a thousand published ports cost a thousand
  sockets and no more processes.
- The daemon binds each listening socket itself, in the host's namespace, and
  hands it over (SCM_RIGHTS): a port taken by a process of the host is a bind
  error in the daemon, reported as Docker does before anything is recorded,
  and the process never needs the privilege to bind.
- It outlives the daemon (live restore): it is started in a session of its
  own and serves while coracled is down or restarting; the daemon finds it
  again through its control socket, `<exec-root>/network/port-proxy.sock`, and
  compares what it serves with the store (PortTable.restore).
- It stays when its last port is removed, serving nothing, until the daemon
  stops: starting it (an interpreter and its imports, ~90 ms) was otherwise
  paid by every `run -p` of a container that was alone in publishing ports,
  the usual case. A daemon that stops asks it to go (`stop`), which it does
  only when it serves nothing, so ports of running containers still answer
  while the daemon is away. A publish that fails before any port is served
  stops the process it started, so bad input leaves nothing behind.
- What it touches: listening sockets it is given, and connections it opens
  to the container's address from the host's namespace; nothing inside a
  container. It drops every capability at start (it keeps root's uid only to
  answer the daemon's control socket, which only root may use).
- The container sees the bridge's gateway as the client, as behind Docker's
  proxy. UDP flows are forgotten after 90 s without traffic (docker-proxy's
  timeout).

Control protocol: SOCK_SEQPACKET, one JSON object per packet, one request per
connection: `add` (mappings, one descriptor each, in order), `remove`
(mappings), `list`, `stop` (exit if nothing is served); the answer is
{"ok": true} (with "mappings" for list, "stopped" for stop) or {"error": "..."}.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from coracle.errors import Conflict
from coracle.netns import netns
from coracle.network import ports
from coracle.network.ports import Mapping

__all__ = ["PortProxy", "proxied"]

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes moved per read: large enough that a bulk transfer costs few system calls
UDP_IDLE = 90.0  # seconds a UDP flow without traffic is kept (docker-proxy's)
FDS_PER_MESSAGE = 200  # the kernel takes at most 253 descriptors in one message
MAX_PACKET = 1 << 20


def proxied(m: Mapping) -> bool:
    """Whether a mapping is this process's (IPv6 host address, IPv4 container) and not the firewall's."""
    return ports.version(m.host_ip) == 6 and ports.version(m.container_ip) == 4


def _row(m: Mapping) -> list[object]:
    return [m.proto, m.host_ip, m.host_port, m.container_ip, m.container_port]


def listen(m: Mapping) -> socket.socket:
    """The listening socket of a mapping, bound in the calling thread's namespace (IPv6 only, so that
    the port on 0.0.0.0 stays the firewall's); Docker's Conflict when a process of the host has it."""
    kind = socket.SOCK_STREAM if m.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET6, kind | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if m.proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((m.host_ip, m.host_port))
        if m.proto == "tcp":
            sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(f"Bind for {ports.shown(m.host_ip)}:{m.host_port} failed: address already in use by "
                           "a process of the host") from None
        raise
    return sock


class PortProxy:
    """The daemon's side: starts the relay process when a port needs it, hands it sockets, finds it again
    after a restart of the daemon, and starts a new one (with every port the store wants) should it die.

    `wanted` returns the proxied mappings the store holds (the whole truth after a crash of the process).
    """

    def __init__(self, exec_root: str, host_netns: str, wanted: Callable[[], list[Mapping]]) -> None:
        self.dir = Path(exec_root) / "network"
        self.path = str(self.dir / "port-proxy.sock")
        self.host_netns = host_netns
        self._wanted = wanted
        self._lock = threading.Lock()

    def add(self, mappings: Sequence[Mapping]) -> None:
        """Serve these mappings (all or none: on an error none of them is left listening)."""
        if not mappings:
            return
        with self._lock:
            running = self._request({"op": "list"})
            if running is None:  # none runs: a new one, with everything the store wants
                self._start()
                mappings = list(dict.fromkeys([*self._wanted(), *mappings]))
            else:  # what it serves already (a container adopted again after the store was lost) stays as it is
                served = {Mapping(*row) for row in running.get("mappings", [])}
                mappings = [m for m in mappings if m not in served]
            try:
                self._hand_over(mappings)
            except BaseException:
                if running is None:  # the one started for this publish goes with it
                    self._stop()
                raise

    def close(self) -> None:
        """The daemon stops: the process goes too unless it still serves ports (they answer meanwhile)."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        with contextlib.suppress(OSError):
            self._request({"op": "stop"})

    def remove(self, mappings: Sequence[Mapping]) -> None:
        """Stop serving these mappings (their connections end); already gone is fine."""
        if not mappings:
            return
        with self._lock:
            if self._request({"op": "remove", "mappings": [_row(m) for m in mappings]}) is None:
                rest = [m for m in self._wanted() if m not in set(mappings)]
                if rest:  # it died: the others come back with a new one
                    self._start()
                    self._hand_over(rest)

    def serving(self) -> list[Mapping]:
        """What the running process serves ([] when none runs)."""
        with self._lock:
            answer = self._request({"op": "list"})
        return [Mapping(*row) for row in (answer or {}).get("mappings", [])]

    def _hand_over(self, mappings: Sequence[Mapping]) -> None:
        """Bind and send the sockets a batch at a time (the daemon never holds more than one batch)."""
        try:
            for start in range(0, len(mappings), FDS_PER_MESSAGE):
                batch = mappings[start:start + FDS_PER_MESSAGE]
                socks: list[socket.socket] = []
                try:
                    with netns(self.host_netns):
                        for m in batch:
                            socks.append(listen(m))
                    if self._request({"op": "add", "mappings": [_row(m) for m in batch]}, socks) is None:
                        raise OSError(errno.EPIPE, "the port proxy exited")
                finally:
                    for sock in socks:
                        sock.close()  # the process holds its own copies
        except BaseException:
            with contextlib.suppress(OSError):
                self._request({"op": "remove", "mappings": [_row(m) for m in mappings]})
            raise

    def _request(self, message: dict[str, Any], socks: Sequence[socket.socket] = ()) -> dict[str, Any] | None:
        """One request on a connection of its own; None when no process answers."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        with conn:
            conn.settimeout(30)
            try:
                conn.connect(self.path)
                socket.send_fds(conn, [json.dumps(message).encode()], [s.fileno() for s in socks])
                raw = conn.recv(MAX_PACKET)
            except (FileNotFoundError, ConnectionRefusedError, BrokenPipeError, ConnectionResetError):
                return None
        if not raw:
            return None
        answer: dict[str, Any] = json.loads(raw)
        if "error" in answer:
            raise OSError(errno.EIO, f"port proxy: {answer['error']}")
        return answer

    def _start(self) -> None:
        """A new process in the host's namespace, in a session of its own (it outlives the daemon)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a process that died
        control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            control.bind(self.path)  # bound before the process starts: the first request cannot miss it
            os.chmod(self.path, 0o600)
            control.listen(16)
            with open(self.dir / "port-proxy.log", "ab") as out, netns(self.host_netns):
                process = subprocess.Popen(
                    [sys.executable, "-m", "coracle.network.portproxy", str(control.fileno()), self.path],
                    pass_fds=[control.fileno()], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                                                 **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})
        finally:
            control.close()
        (self.dir / "port-proxy.pid").write_text(str(process.pid))
        threading.Thread(target=process.wait, name="coracle-port-proxy-reaper", daemon=True).start()


# ----- the process -----------------------------------------------------------


class _Connection:
    """A TCP client and its connection to the container, bytes moved both ways as each side can take them.

    socks[0] is the client, socks[1] the container; pending[i] waits to be written to socks[i]."""

    def __init__(self, loop: _Loop, listener: _Listener, client: socket.socket, upstream: socket.socket) -> None:
        self.loop, self.listener, self.socks = loop, listener, (client, upstream)
        self.pending = [b"", b""]
        self.ended = [False, False]  # socks[i] will send nothing more
        self.connected = False
        self.watched = [0, 0]  # the epoll mask each socket is registered with (0: not registered)

    def update(self) -> None:
        for i, sock in enumerate(self.socks):
            if not self.connected:
                mask = select.EPOLLOUT if i == 1 else 0
            else:
                mask = (select.EPOLLIN if not self.ended[i] and not self.pending[1 - i] else 0) | \
                       (select.EPOLLOUT if self.pending[i] else 0)
            if mask != self.watched[i]:
                self.loop.watch(sock, mask, partial(self.on_event, i), self.watched[i] != 0)
                self.watched[i] = mask

    def on_event(self, i: int, events: int) -> None:
        try:
            if not self.connected:
                error = self.socks[1].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error))
                self.connected = True
            elif events & select.EPOLLOUT and self.pending[i]:
                self._flush(i)
            elif events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self._read(i)
        except OSError:
            self.close()
            return
        if all(self.ended) and not any(self.pending):
            self.close()
        else:
            self.update()

    def _read(self, i: int) -> None:
        data = self.socks[i].recv(CHUNK)
        other = 1 - i
        if not data:
            self.ended[i] = True
            if not self.pending[other]:
                self.socks[other].shutdown(socket.SHUT_WR)
            return
        self.pending[other] = data
        self._flush(other)

    def _flush(self, i: int) -> None:
        try:
            sent = self.socks[i].send(self.pending[i])
        except BlockingIOError:
            return
        self.pending[i] = self.pending[i][sent:]
        if not self.pending[i] and self.ended[1 - i]:
            self.socks[i].shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for i, sock in enumerate(self.socks):
            if self.watched[i]:
                self.loop.forget(sock)
            sock.close()
        self.watched = [0, 0]
        self.loop.connections.discard(self)


class _Listener:
    """One published port: its socket, and for UDP the flows to the container by client address."""

    def __init__(self, loop: _Loop, mapping: Mapping, sock: socket.socket) -> None:
        self.loop, self.mapping, self.sock = loop, mapping, sock
        self.target = (mapping.container_ip, mapping.container_port)
        self.flows: dict[tuple[object, ...], tuple[socket.socket, list[float]]] = {}
        sock.setblocking(False)
        loop.watch(sock, select.EPOLLIN, self.on_accept if mapping.proto == "tcp" else self.on_datagram)

    def on_accept(self, _events: int) -> None:
        for _ in range(64):
            try:
                client, _peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, or a connection reset before it was taken
                log.warning("accept on %s: %s", self.mapping, exc)
                return
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self.loop, self, client, upstream)
            self.loop.connections.add(conn)
            if upstream.connect_ex(self.target) not in (0, errno.EINPROGRESS):
                conn.close()
                continue
            conn.update()

    def on_datagram(self, _events: int) -> None:
        now = time.monotonic()
        for _ in range(64):
            try:
                data, peer = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            flow = self.flows.get(peer)
            if flow is None:
                upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                upstream.setblocking(False)
                upstream.connect(self.target)
                flow = self.flows[peer] = (upstream, [now])
                self.loop.watch(upstream, select.EPOLLIN, partial(self._reply, peer, upstream))
            flow[1][0] = now
            with contextlib.suppress(OSError):  # a full buffer or an unreachable container drops it, as UDP does
                flow[0].send(data)

    def _reply(self, peer: tuple[object, ...], upstream: socket.socket, _events: int) -> None:
        for _ in range(64):
            try:
                data = upstream.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the container's port is closed (ICMP): the next datagram tries again
                return
            with contextlib.suppress(OSError):
                self.sock.sendto(data, peer)
            if peer in self.flows:
                self.flows[peer][1][0] = time.monotonic()

    def expire(self, now: float) -> None:
        for peer, (upstream, seen) in list(self.flows.items()):
            if now - seen[0] > UDP_IDLE:
                self.loop.forget(upstream)
                upstream.close()
                del self.flows[peer]

    def close(self) -> None:
        self.expire(float("inf"))
        self.loop.forget(self.sock)
        self.sock.close()


class _Loop:
    """The process: the control socket, every listener and every relayed connection in one epoll loop."""

    def __init__(self, control: socket.socket, path: str) -> None:
        self.path = path
        self.listeners: dict[Mapping, _Listener] = {}
        self.connections: set[_Connection] = set()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._epoll = select.epoll()
        self._control = control
        self._running = True
        control.setblocking(False)
        self.watch(control, select.EPOLLIN, self._on_control)

    def watch(self, sock: socket.socket, mask: int, handler: Callable[[int], None], known: bool = False) -> None:
        """Call `handler(events)` on `mask` (0: stop watching the socket until asked again)."""
        fd = sock.fileno()
        if not mask:
            self.forget(sock)
        elif known:
            self._handlers[fd] = handler
            self._epoll.modify(fd, mask)
        else:
            self._handlers[fd] = handler
            self._epoll.register(fd, mask)

    def forget(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._handlers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def run(self) -> None:
        while self._running:
            udp = any(listener.flows for listener in self.listeners.values())
            try:
                events = self._epoll.poll(UDP_IDLE / 3 if udp else -1)
            except InterruptedError:
                continue
            for fd, mask in events:
                handler = self._handlers.get(fd)
                if handler is not None:
                    try:
                        handler(mask)
                    except Exception:  # one bad connection must not end every published port
                        log.exception("port proxy handler for fd %d", fd)
            if udp:
                now = time.monotonic()
                for listener in self.listeners.values():
                    listener.expire(now)

    def _on_control(self, _events: int) -> None:
        try:
            conn, _ = self._control.accept()
        except BlockingIOError:
            return
        with conn:
            _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid not in (0, os.getuid()):
                return
            conn.settimeout(5)
            try:
                data, fds, _, _ = socket.recv_fds(conn, MAX_PACKET, FDS_PER_MESSAGE)
            except OSError:
                return
            try:
                answer = self._apply(json.loads(data), fds)
            except Exception as exc:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            if answer.get("stopped"):  # gone before the daemon hears back: its next request starts a new one
                self._running = False
                for path in (self.path, os.path.join(os.path.dirname(self.path), "port-proxy.pid")):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            with contextlib.suppress(OSError):
                conn.send(json.dumps(answer).encode())

    def _apply(self, message: dict[str, object], fds: list[int]) -> dict[str, object]:
        op = message["op"]
        rows = message.get("mappings") or []
        assert isinstance(rows, list)
        mappings = [Mapping(*row) for row in rows]
        if op == "list":
            return {"ok": True, "mappings": [_row(m) for m in self.listeners]}
        if op == "add":
            if len(fds) != len(mappings):
                raise ValueError(f"{len(mappings)} mappings but {len(fds)} sockets")
            for m, fd in zip(mappings, fds, strict=True):
                self._drop(m)
                self.listeners[m] = _Listener(self, m, socket.socket(fileno=fd))
            return {"ok": True}
        if op == "remove":
            for m in mappings:
                self._drop(m)
            return {"ok": True}
        if op == "stop":
            return {"ok": True, "stopped": not self.listeners}
        raise ValueError(f"unknown request {op!r}")

    def _drop(self, m: Mapping) -> None:
        listener = self.listeners.pop(m, None)
        if listener is not None:
            listener.close()
            for conn in [c for c in self.connections if c.listener is listener]:
                conn.close()  # as docker-proxy's connections end when it is stopped


def _drop_privileges() -> None:
    """No capability at all: the process only accepts, connects and relays (with a descriptor limit
    for thousands of listeners and connections, as the daemon's own)."""
    from coracle.runtime import capabilities, limits, syscalls

    limits.raise_nofile()
    capabilities.limit_bounding([])
    capabilities.set_process([])
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)


def main() -> None:
    """`python -m coracle.network.portproxy CONTROL_FD SOCKET_PATH`: the relay process (see PortProxy)."""
    args = sys.argv[1:]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s coracle-port-proxy: %(message)s")
    control = socket.socket(fileno=int(args[0]))
    _drop_privileges()
    _Loop(control, args[1]).run()


if __name__ == "__main__":
    main()
