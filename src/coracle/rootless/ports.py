"""Published ports of a rootless daemon, reachable from the user's host side.

The daemon publishes a port as usual in the rootless network namespace
(nftables DNAT of the namespace's own addresses, 127.0.0.1 included). What
the host sees is a listener per published port, TCP or UDP, held by the
namespaces keeper (holder.py), the one process of the set that is both in
the host's network namespace and root of the rootless one:

- TCP: each accepted connection is joined to a connection made inside the
  namespace to the published port, which the namespace's DNAT takes to the
  container, and the two are spliced in the kernel (no copy through user space);
- UDP: each client address gets its own socket inside, connected the same
  way; datagrams are relayed both ways until the client is idle for UDP_IDLE.

The sockets inside speak with the client's own address (source_address.py),
so a container sees who connected, as it would behind a rootful daemon.

The listeners are bound as the user in the host's namespace: a port below
net.ipv4.ip_unprivileged_port_start fails there exactly as it would for any
program of the user. They live as long as the namespaces, so published ports
keep working while the daemon restarts; the daemon sends the whole set of
ports of its running containers at start and after every start and stop
(`Forwarder.publish`), and the keeper opens what is new and closes what went.

pasta's own forwarding (which also keeps the client's address) cannot be
used: its port list is fixed when it starts, and its `-t auto` mode does not
forward anything from a namespace it joins (by path or by PID) in the version
Debian 12 ships (0.0~git20230309).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import select
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from coracle.rootless import source_address
from coracle.runtime import syscalls as sc

if TYPE_CHECKING:  # the engine's record, read only (importing the engine here would be a cycle)
    from coracle.engine.container import Container

log = logging.getLogger("coracle")
Binding = tuple[str, str, int]  # protocol ("tcp" or "udp"), host address, port
_CHUNK = 1 << 20
UDP_IDLE = 90.0  # seconds without a datagram after which a UDP client's relay ends (Docker's proxy: 90 s)
_DATAGRAM = 65535


def _inner_target(addr: str, port: int) -> tuple[str, int]:
    """Where a forwarded connection goes inside: the published address itself (pasta gave the
    namespace the host's address), or 127.0.0.1 for a wildcard or an IPv6 binding (the sockets
    inside are IPv4); the namespace's DNAT answers both, as the host's would."""
    return ("127.0.0.1" if addr == "0.0.0.0" or ":" in addr else addr), port


def splice(src: socket.socket, dst: socket.socket) -> None:
    """Move bytes from src to dst through a kernel pipe until src ends, then half-close dst."""
    r, w = os.pipe()
    try:
        with contextlib.suppress(OSError):  # fewer, larger splices (the default pipe holds 64 KiB)
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _CHUNK)
        while True:
            n = os.splice(src.fileno(), w, _CHUNK, flags=os.SPLICE_F_MOVE)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n, flags=os.SPLICE_F_MOVE)  # no F_MORE: it corks (200 ms)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def join(a: socket.socket, b: socket.socket) -> None:
    """Splice two connected TCP sockets both ways until both directions have ended."""
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=splice, args=(b, a), daemon=True)
    back.start()
    splice(a, b)
    back.join()


class Inside:
    """Where forwarded traffic goes: the rootless network namespace, and whether its sockets
    there can keep the client's address (source_address.prepare succeeded)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.keep_source = False

    def enter(self) -> None:
        """Move the calling thread into the namespace (setns is per thread for networks)."""
        fd = os.open(self.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, sc.CLONE_NEWNET)
        finally:
            os.close(fd)

    def prepare(self) -> None:
        """Install the reply path of source-keeping sockets, from a thread of its own inside."""
        def install() -> None:
            self.enter()
            try:
                source_address.prepare()
                self.keep_source = True
            except OSError as exc:
                print(f"published ports will not keep the client's address: {exc}", file=sys.stderr, flush=True)

        t = threading.Thread(target=install)
        t.start()
        t.join()

    def socket(self, kind: socket.SocketKind, client: tuple[str, int]) -> socket.socket:
        return source_address.inner_socket(kind, client, self.keep_source)


def _connect(client: socket.socket, peer: tuple[str, int], target: tuple[str, int], inside: Inside) -> None:
    """One forwarded TCP connection: its own thread, moved into the namespace to connect."""
    inside.enter()
    with client, inside.socket(socket.SOCK_STREAM, peer) as inner:
        try:
            inner.connect(target)
        except OSError:
            return
        join(client, inner)


def _accept(listener: socket.socket, target: tuple[str, int], inside: Inside) -> None:
    while True:
        try:
            client, peer = listener.accept()
        except OSError:
            return  # closed: the port was unpublished
        threading.Thread(target=_connect, args=(client, peer[:2], target, inside), daemon=True).start()


def _relay_back(outer: socket.socket, inner: socket.socket, peer: tuple[str, int],
                sessions: dict[tuple[str, int], socket.socket]) -> None:
    """The container's datagrams to one UDP client, until it has been idle UDP_IDLE seconds."""
    with inner:
        while True:
            ready, _, _ = select.select([inner], [], [], UDP_IDLE)
            if not ready:
                break
            try:
                outer.sendto(inner.recv(_DATAGRAM), peer)
            except OSError:
                break
        sessions.pop(peer, None)


def _relay(outer: socket.socket, target: tuple[str, int], inside: Inside) -> None:
    """A published UDP port: one socket inside per client address, made on its first datagram."""
    inside.enter()  # the host socket is already bound; every socket made from here on is inside
    sessions: dict[tuple[str, int], socket.socket] = {}
    while True:
        try:
            data, peer = outer.recvfrom(_DATAGRAM)
        except OSError:
            break
        if peer is None:
            break  # shut down: the port was unpublished
        peer = peer[:2]
        inner = sessions.get(peer)
        if inner is None:
            inner = inside.socket(socket.SOCK_DGRAM, peer)
            try:
                inner.connect(target)
            except OSError:
                inner.close()
                continue
            sessions[peer] = inner
            threading.Thread(target=_relay_back, args=(outer, inner, peer, sessions), daemon=True).start()
        with contextlib.suppress(OSError):
            inner.send(data)
    for inner in list(sessions.values()):
        with contextlib.suppress(OSError):
            inner.shutdown(socket.SHUT_RDWR)


class Listeners:
    """The host-side sockets, one per published binding."""

    def __init__(self, inside: Inside) -> None:
        self.inside = inside
        self.open: dict[Binding, socket.socket] = {}

    def _open(self, proto: str, addr: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # "::" beside "0.0.0.0", as Docker records both
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
            if proto == "tcp":
                s.listen(512)
        except OSError:
            s.close()
            raise
        return s

    def set(self, wanted: Iterable[Binding]) -> dict[str, str]:
        """Open the new bindings, close the ones no longer wanted; errors by binding."""
        wanted = set(wanted)
        for binding in set(self.open) - wanted:
            s = self.open.pop(binding)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
            s.close()
        errors = {}
        for proto, addr, port in wanted - set(self.open):
            try:
                s = self._open(proto, addr, port)
            except OSError as exc:
                errors[f"{addr}:{port}/{proto}"] = exc.strerror or str(exc)
                continue
            self.open[(proto, addr, port)] = s
            serve_one = _accept if proto == "tcp" else _relay
            threading.Thread(target=serve_one, args=(s, _inner_target(addr, port), self.inside), daemon=True).start()
        return errors


def serve(path: str, netns: str) -> None:
    """The keeper's loop: one JSON request per connection, {"ports": [[proto, addr, port], ...]}."""
    inside = Inside(netns)
    inside.prepare()
    listeners = Listeners(inside)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                request = json.loads(conn.makefile("rb").readline())
                errors = listeners.set((str(proto), str(a), int(p)) for proto, a, p in request["ports"])
                conn.sendall(json.dumps({"errors": errors}).encode() + b"\n")
            except (OSError, ValueError, KeyError, TypeError):
                continue


class Forwarder:
    """The daemon's side: tell the keeper which ports the running containers publish."""

    def __init__(self, exec_root: str) -> None:
        self.path = os.path.join(exec_root, "rootless", "ports.sock")
        self.lock = threading.Lock()

    def publish(self, bindings: Iterable[Binding]) -> dict[str, str]:
        """Make the host's listeners exactly `bindings`; returns the ones that failed, with why."""
        request = json.dumps({"ports": sorted(set(bindings))}).encode() + b"\n"
        with self.lock, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.path)
            s.sendall(request)
            return dict(json.loads(s.makefile("rb").readline())["errors"])


def bindings_of(containers: Iterable[Container]) -> list[Binding]:
    """The host bindings of running containers, from their published ports."""
    found = []
    for c in containers:
        if not c.state.running:
            continue
        for key, hosts in c.network_settings.ports.items():
            proto = key.rpartition("/")[2] or "tcp"
            if proto not in ("tcp", "udp"):
                continue
            for h in hosts or []:
                if h.get("HostPort"):
                    found.append((proto, h.get("HostIp") or "0.0.0.0", int(h["HostPort"])))
    return found


def sync(forwarder: Forwarder, containers: Callable[[], list[Container]]) -> None:
    """Publish what the running containers ask for now; a port the user may not bind is logged."""
    try:
        failed = forwarder.publish(bindings_of(containers()))
    except OSError as exc:
        log.error("published ports not forwarded to the host: the rootless holder does not answer (%s)", exc)
        return
    for binding, why in failed.items():
        log.error("published port %s cannot be opened on the host: %s", binding, why)


async def follow(bus: Any, containers: Callable[[], list[Container]], forwarder: Forwarder) -> None:
    """Keep the host's listeners in step with the containers: at start, then on every start and stop."""
    sub = bus.subscribe()
    try:
        await asyncio.to_thread(sync, forwarder, containers)
        while True:
            event = await sub.get()
            if event["Type"] == "container" and event["Action"] in ("start", "die"):
                await asyncio.to_thread(sync, forwarder, containers)
    finally:
        sub.close()
