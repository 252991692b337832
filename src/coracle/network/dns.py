"""The embedded resolver of user-defined networks, at 127.0.0.11:53 in each container.

Choices and why:

- Where it listens: every address of 127.0.0.0/8 is already local on a
  namespace's `lo`, so a UDP and a TCP socket *opened inside the container's
  network namespace* (the daemon thread enters it with setns just for the
  socket() and bind() calls) bound to 127.0.0.11:53 are reachable from the
  container with no DNAT, no extra address and no firewall rule in its
  namespace. The sockets belong to the daemon: no process per container, and
  nothing of ours runs inside the container.
- How it runs: one asyncio loop in one daemon thread serves every container's
  pair of sockets; a query for an unknown name is forwarded (UDP, then the
  answer relayed as is) to the upstream resolvers from a socket of the *host*
  namespace, so loopback upstreams such as 127.0.0.53 work as they do for the
  host. Records are looked up at query time through a callback, so they
  follow containers coming and going without any push.
- What it answers: A for container names, network aliases, 12-char short
  ids and hostnames of containers sharing a network with the asking
  container, AAAA for their IPv6 addresses (networks with EnableIPv6); PTR
  for their addresses of both families; an empty NOERROR for other types of a
  known name. Everything else goes upstream; SERVFAIL if no upstream answers.

After a daemon restart the sockets are gone; `NetworkManager.reconcile()`
re-opens them for the running containers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A, DNSRecord

from coracle.runtime.syscalls import netns

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.11"
TTL = 600
FORWARD_TIMEOUT = 3.0

# (asking container id, name) -> addresses of both families; (asking container id, address) -> names
Lookup = Callable[[str, str], list[str]]
Reverse = Callable[[str, str], list[str]]


@dataclass
class _Served:
    udp: asyncio.DatagramTransport
    tcp: asyncio.base_events.Server
    upstreams: list[str] = field(default_factory=list)


class Resolver:
    """Serves 127.0.0.11:53 inside containers' namespaces from one daemon thread."""

    def __init__(self, lookup: Lookup, reverse: Reverse, host_netns: str, upstreams: list[str]) -> None:
        self._lookup, self._reverse = lookup, reverse
        self._host_netns = host_netns
        self.upstreams = upstreams
        self._served: dict[str, _Served] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = threading.Lock()

    # ----- life ------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                ready = threading.Event()
                threading.Thread(target=self._run, args=(ready,), name="coracle-dns", daemon=True).start()
                ready.wait()
            assert self._loop is not None
            return self._loop

    def _run(self, ready: threading.Event) -> None:
        with netns(self._host_netns):  # forwarded queries leave from the host's namespace
            loop = self._loop = asyncio.new_event_loop()
            ready.set()
            loop.run_forever()
            loop.close()

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
        udp, tcp = socks
        loop = self._ensure_loop()
        fut = asyncio.run_coroutine_threadsafe(self._open(container_id, udp, tcp, upstreams or []), loop)
        fut.result()

    async def _open(self, cid: str, udp: socket.socket, tcp: socket.socket, upstreams: list[str]) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self, cid), sock=udp)
        server = await asyncio.start_server(lambda r, w: self._tcp_client(cid, r, w), sock=tcp)
        self._served[cid] = _Served(transport, server, upstreams)

    def stop(self, container_id: str) -> None:
        """Close the container's sockets (done when this returns, so the address can be re-bound)."""
        served = self._served.pop(container_id, None)
        if served is None or self._loop is None:
            return

        async def close() -> None:
            served.udp.close()
            served.tcp.close()
            await served.tcp.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result()

    def close(self) -> None:
        """Close every container's sockets and stop the loop (a later serve() starts a new one)."""
        for cid in list(self._served):
            self.stop(cid)
        with self._start_lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None

    # ----- answering -------------------------------------------------------

    async def answer(self, cid: str, data: bytes) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # not DNS: drop silently like any resolver
            return None
        q = query.q
        name = str(q.qname).rstrip(".").lower()
        reply = query.reply()
        if q.qtype == QTYPE.PTR and name.endswith((".in-addr.arpa", ".ip6.arpa")):
            address = _reverse_pointer_address(name)
            names = self._reverse(cid, address) if address else []
            if names:
                reply.add_answer(RR(q.qname, QTYPE.PTR, rdata=PTR(names[0] + "."), ttl=TTL))
                return reply.pack()
        else:
            addresses = self._lookup(cid, name)
            if addresses:
                for addr in addresses:
                    v6 = ":" in addr
                    if q.qtype == QTYPE.ANY or q.qtype == (QTYPE.AAAA if v6 else QTYPE.A):
                        rtype, rdata = (QTYPE.AAAA, AAAA(addr)) if v6 else (QTYPE.A, A(addr))
                        reply.add_answer(RR(q.qname, rtype, rdata=rdata, ttl=TTL))
                return reply.pack()
        served = self._served.get(cid)
        upstreams = (served.upstreams if served else []) or self.upstreams
        for upstream in upstreams:
            answer = await self._forward(upstream, data)
            if answer is not None:
                return answer
        reply.header.rcode = RCODE.SERVFAIL
        return reply.pack()

    async def _forward(self, upstream: str, data: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, addr: tuple) -> None:
                if not done.done():
                    done.set_result(reply)

        try:
            transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(upstream, 53))
        except OSError:
            return None
        try:
            transport.sendto(data)
            return await asyncio.wait_for(done, FORWARD_TIMEOUT)
        except (asyncio.TimeoutError, OSError):
            return None
        finally:
            transport.close()

    async def _tcp_client(self, cid: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                answer = await self.answer(cid, await reader.readexactly(size))
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, cid: str) -> None:
        self.resolver, self.cid = resolver, cid
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        asyncio.ensure_future(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple) -> None:
        answer = await self.resolver.answer(self.cid, data)
        if answer is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)


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
