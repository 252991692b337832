"""The embedded resolver of user-defined networks, at 127.0.0.11:53 in each container.

Choices and why:

- Where it listens: every address of 127.0.0.0/8 is already local on a
  namespace's `lo`, so a UDP and a TCP socket *opened inside the container's
  network namespace* (the calling thread enters it with setns just for the
  socket() and bind() calls) bound to 127.0.0.11:53 are reachable from the
  container with no DNAT, no extra address and no firewall rule in its
  namespace. The sockets belong to the daemon: no process per container, and
  nothing of ours runs inside the container.
- How it runs: one daemon thread waits in epoll on every container's pair of
  sockets. It never takes the store's lock nor any of the engine's: names
  come from the in-memory `NameTable` the network manager keeps, so a query
  does not wait behind container starts.
- Why it is fast: a container asks the same few questions over and over, and
  an answer differs from the last one to the same question only in its ID. So
  each container has a cache of packed answers keyed by the query bytes after
  the ID; a hit costs one dict lookup and two byte slices, no DNS parsing. The
  cache is dropped whenever the table's generation moves (any endpoint added,
  removed or renamed), and bounded, so it can never answer from stale names.
  Only a miss parses the query (dnslib) and consults the table.
- What it answers: A for container names, network aliases, 12-char short
  ids and hostnames of containers sharing a network with the asking
  container, AAAA for their IPv6 addresses (networks with EnableIPv6); PTR
  for their addresses of both families; an empty NOERROR for other types of a
  known name. Everything else is forwarded (UDP, the answer relayed as is, not
  cached) to the upstream resolvers from a socket of the *host* namespace, so
  loopback upstreams such as 127.0.0.53 work as they do for the host;
  SERVFAIL if no upstream answers.

After a daemon restart the sockets are gone; `NetworkManager.reconcile()`
re-opens them for the running containers.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable

from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A, DNSRecord

from coracle.network.names import NameTable
from coracle.runtime.syscalls import netns

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.11"
TTL = 600
FORWARD_TIMEOUT = 3.0
CACHE_LIMIT = 4096  # distinct questions cached per container before its cache starts over
BURST = 64  # datagrams taken from one socket before the other sockets get their turn

Send = Callable[[bytes], None]


class _Served:
    """One container's sockets, its upstreams (its --dns, if any) and its answer cache."""

    def __init__(self, cid: str, udp: socket.socket, tcp: socket.socket, upstreams: list[str]) -> None:
        self.cid, self.udp, self.tcp, self.upstreams = cid, udp, tcp, upstreams
        self.connections: set[socket.socket] = set()
        self.cache: dict[bytes, bytes] = {}  # query without its ID -> answer without its ID
        self.generation = -1  # of the name table the cache was filled from


class _Forward:
    """A query waiting for an upstream's answer."""

    def __init__(self, sock: socket.socket, query: bytes, upstreams: list[str], send: Send, servfail: bytes) -> None:
        self.sock, self.query, self.upstreams, self.send, self.servfail = sock, query, upstreams, send, servfail
        self.deadline = time.monotonic() + FORWARD_TIMEOUT


class Resolver:
    """Serves 127.0.0.11:53 inside containers' namespaces from one daemon thread."""

    def __init__(self, names: NameTable, host_netns: str, upstreams: list[str]) -> None:
        self.names = names
        self._host_netns = host_netns
        self.upstreams = upstreams
        self._served: dict[str, _Served] = {}
        # touched only by the loop thread (other threads hand it work through _call):
        self._handlers: dict[int, Callable[[], None]] = {}
        self._forwards: dict[int, _Forward] = {}
        self._calls: deque[tuple[Callable[[], None], Future]] = deque()
        self._epoll: select.epoll | None = None
        self._wake = -1
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False

    # ----- life ------------------------------------------------------------

    def _call(self, work: Callable[[], None]) -> None:
        """Run `work` in the loop thread and wait for it (sockets are only ever touched there)."""
        with self._start_lock:
            if self._thread is None:
                self._epoll = select.epoll()
                self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._epoll.register(self._wake, select.EPOLLIN)
                self._thread = threading.Thread(target=self._run, args=(self._epoll, self._wake),
                                                name="coracle-dns", daemon=True)
                self._thread.start()
            done: Future = Future()
            self._calls.append((work, done))
            os.eventfd_write(self._wake, 1)
        done.result()

    def _run(self, epoll: select.epoll, wake: int) -> None:
        with netns(self._host_netns):  # forwarded queries leave from the host's namespace
            handlers = self._handlers
            while True:
                try:
                    events = epoll.poll(self._timeout())
                except InterruptedError:
                    continue
                for fd, _ in events:
                    if fd == wake:
                        os.eventfd_read(wake)
                        if not self._run_calls():
                            return
                    else:
                        handler = handlers.get(fd)
                        if handler is not None:
                            try:
                                handler()
                            except Exception:  # one bad query or socket must not end name resolution
                                log.exception("DNS handler for fd %d", fd)
                if self._forwards:
                    self._expire()

    def _run_calls(self) -> bool:
        """Work handed over by other threads; False once asked to stop."""
        while self._calls:
            work, done = self._calls.popleft()
            try:
                work()
                done.set_result(None)
            except BaseException as exc:
                done.set_exception(exc)
        return not self._stopping

    def serving(self) -> set[str]:
        return set(self._served)

    def serve(self, container_id: str, netns_path: str, upstreams: list[str] | None = None) -> None:
        """Listen on 127.0.0.11:53 (UDP and TCP) inside the container's namespace."""
        if container_id in self._served:
            return
        socks: list[socket.socket] = []
        try:
            with netns(netns_path):  # socket() binds the socket to the thread's namespace
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    socks.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((ADDRESS, 53))
                    sock.setblocking(False)
                socks[1].listen(64)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        served = _Served(container_id, socks[0], socks[1], upstreams or [])
        self._call(lambda: self._open(served))

    def _open(self, served: _Served) -> None:
        self._watch(served.udp, lambda: self._on_datagrams(served))
        self._watch(served.tcp, lambda: self._on_accept(served))
        self._served[served.cid] = served

    def _watch(self, sock: socket.socket, handler: Callable[[], None]) -> None:
        assert self._epoll is not None
        self._handlers[sock.fileno()] = handler
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    def _forget(self, sock: socket.socket) -> None:
        """Stop watching and close (in the loop thread, so no event can name a reused fd)."""
        assert self._epoll is not None
        if sock.fileno() >= 0:
            self._handlers.pop(sock.fileno(), None)
            self._epoll.unregister(sock.fileno())
        sock.close()

    def stop(self, container_id: str) -> None:
        """Close the container's sockets (done when this returns, so the address can be re-bound)."""
        served = self._served.get(container_id)
        if served is None or self._thread is None:
            return

        def close() -> None:
            for sock in (served.udp, served.tcp, *served.connections):
                self._forget(sock)
            self._served.pop(container_id, None)

        self._call(close)

    def close(self) -> None:
        """Close every container's sockets and stop the loop (a later serve() starts a new one)."""
        for cid in list(self._served):
            self.stop(cid)
        if self._thread is None:
            return

        def finish() -> None:
            for fwd in list(self._forwards.values()):
                self._end_forward(fwd)
            self._stopping = True

        self._call(finish)
        with self._start_lock:
            assert self._epoll is not None and self._thread is not None
            self._thread.join()
            self._epoll.close()
            os.close(self._wake)
            self._thread = self._epoll = None
            self._stopping = False

    # ----- answering -------------------------------------------------------

    def _on_datagrams(self, served: _Served) -> None:
        """The hot path: answers from the cache need no parsing at all."""
        sock, cache, names = served.udp, served.cache, self.names
        for _ in range(BURST):
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:  # drained (EAGAIN), or an error queued on the socket
                return
            if served.generation != names.generation:
                cache.clear()
                served.generation = names.generation
            tail = cache.get(data[2:])
            if tail is not None:
                try:
                    sock.sendto(data[:2] + tail, peer)
                except OSError:
                    pass
            else:
                self._miss(served, data, lambda answer, peer=peer: _send_datagram(sock, answer, peer))

    def _miss(self, served: _Served, data: bytes, send: Send) -> bool:
        """Answer from the name table (and cache it), or forward upstream; False if `data` is not DNS."""
        generation = self.names.generation  # read before the table: a change meanwhile drops the entry
        try:
            query = DNSRecord.parse(data)
        except Exception:  # not DNS: no answer, like any resolver
            return False
        answer = self.answer(served.cid, query)
        if answer is not None:
            if served.generation != generation:
                served.cache.clear()
                served.generation = generation
            if len(served.cache) >= CACHE_LIMIT:
                served.cache.clear()
            served.cache[data[2:]] = answer[2:]
            send(answer)
            return True
        reply = query.reply()
        reply.header.rcode = RCODE.SERVFAIL
        self._forward(data, list(served.upstreams or self.upstreams), send, reply.pack())
        return True

    def answer(self, cid: str, query: DNSRecord) -> bytes | None:
        """The packed answer for a name container `cid` may know, None for names to forward."""
        q = query.q
        name = str(q.qname).rstrip(".").lower()
        reply = query.reply()
        if q.qtype == QTYPE.PTR and name.endswith((".in-addr.arpa", ".ip6.arpa")):
            address = _reverse_pointer_address(name)
            pointers = self.names.pointers(cid, address) if address else []
            if not pointers:
                return None
            reply.add_answer(RR(q.qname, QTYPE.PTR, rdata=PTR(pointers[0] + "."), ttl=TTL))
            return reply.pack()
        addresses = self.names.addresses(cid, name)
        if not addresses:
            return None
        for addr in addresses:
            v6 = ":" in addr
            if q.qtype == QTYPE.ANY or q.qtype == (QTYPE.AAAA if v6 else QTYPE.A):
                rtype, rdata = (QTYPE.AAAA, AAAA(addr)) if v6 else (QTYPE.A, A(addr))
                reply.add_answer(RR(q.qname, rtype, rdata=rdata, ttl=TTL))
        return reply.pack()

    # ----- forwarding ------------------------------------------------------

    def _forward(self, query: bytes, upstreams: list[str], send: Send, servfail: bytes) -> None:
        """Ask the next upstream (from the loop thread, so from the host's namespace)."""
        while upstreams:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect((upstreams.pop(0), 53))  # connected: a refusal shows up at recv
                sock.send(query)
            except OSError:
                sock.close()
                continue
            fwd = _Forward(sock, query, upstreams, send, servfail)
            self._forwards[sock.fileno()] = fwd
            self._watch(sock, lambda: self._on_upstream(fwd))
            return
        send(servfail)

    def _on_upstream(self, fwd: _Forward) -> None:
        try:
            answer = fwd.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:  # refused: the next upstream
            self._end_forward(fwd)
            self._forward(fwd.query, fwd.upstreams, fwd.send, fwd.servfail)
            return
        self._end_forward(fwd)
        fwd.send(answer)

    def _end_forward(self, fwd: _Forward) -> None:
        self._forwards.pop(fwd.sock.fileno(), None)
        self._forget(fwd.sock)

    def _timeout(self) -> float:
        if not self._forwards:
            return -1
        return max(0.0, min(f.deadline for f in self._forwards.values()) - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        for fwd in [f for f in self._forwards.values() if f.deadline <= now]:
            self._end_forward(fwd)
            self._forward(fwd.query, fwd.upstreams, fwd.send, fwd.servfail)

    # ----- TCP -------------------------------------------------------------

    def _on_accept(self, served: _Served) -> None:
        try:
            conn, _ = served.tcp.accept()
        except OSError:
            return
        conn.settimeout(1.0)  # reads only follow readiness; writes of an answer may wait a little
        served.connections.add(conn)
        pending = bytearray()

        def readable() -> None:
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            pending.extend(chunk)
            while chunk and len(pending) >= 2 and len(pending) >= 2 + int.from_bytes(pending[:2], "big"):
                size = int.from_bytes(pending[:2], "big")
                data = bytes(pending[2:2 + size])
                del pending[:2 + size]
                if not self._answer_stream(served, data, lambda answer: _send_stream(conn, answer)):
                    chunk = b""  # not DNS: hang up
            if not chunk:
                served.connections.discard(conn)
                self._forget(conn)

        self._watch(conn, readable)

    def _answer_stream(self, served: _Served, data: bytes, send: Send) -> bool:
        if served.generation == self.names.generation and (tail := served.cache.get(data[2:])) is not None:
            send(data[:2] + tail)
            return True
        return self._miss(served, data, send)


def _send_datagram(sock: socket.socket, answer: bytes, peer: tuple) -> None:
    try:
        sock.sendto(answer, peer)
    except OSError:  # the container went away meanwhile
        pass


def _send_stream(conn: socket.socket, answer: bytes) -> None:
    try:
        conn.sendall(len(answer).to_bytes(2, "big") + answer)
    except OSError:  # the client hung up meanwhile
        pass


def _reverse_pointer_address(name: str) -> str | None:
    """"4.3.2.1.in-addr.arpa" -> "1.2.3.4"; 32 nibbles of ip6.arpa -> the compressed IPv6 address."""
    if name.endswith(".in-addr.arpa"):
        return ".".join(reversed(name[: -len(".in-addr.arpa")].split(".")))
    nibbles = name[: -len(".ip6.arpa")].split(".")
    if len(nibbles) != 32:
        return None
    digits = "".join(reversed(nibbles))
    try:
        return str(ipaddress.IPv6Address(int(digits, 16)))
    except ValueError:
        return None


def upstreams_from(resolv_conf: str) -> list[str]:
    """The IPv4 nameservers of a resolv.conf (the daemon's own, loopback included)."""
    out = []
    try:
        with open(resolv_conf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                    out.append(parts[1])
    except OSError:
        pass
    return out
