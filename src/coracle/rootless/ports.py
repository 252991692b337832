"""Published ports of a rootless daemon, reachable from the user's host side.

The daemon publishes a port as usual in the rootless network namespace
(nftables DNAT of the namespace's own addresses, 127.0.0.1 included). What
the host sees is a listener per published port, held by the namespaces
keeper (holder.py), the one process of the set that is both in the host's
network namespace and root of the rootless one. Each accepted connection is
joined to a connection made inside the namespace to 127.0.0.1:<port>, which
the namespace's DNAT takes to the container, and the two are spliced in the
kernel (no copy through user space).

The listeners are bound as the user in the host's namespace: a port below
net.ipv4.ip_unprivileged_port_start fails there exactly as it would for any
program of the user. They live as long as the namespaces, so published ports
keep working while the daemon restarts; the daemon sends the whole set of
ports of its running containers at start and after every start and stop
(`Forwarder.publish`), and the keeper opens what is new and closes what went.

pasta's own forwarding (which would keep the client's address) cannot be
used: its port list is fixed when it starts, and its `-t auto` mode does not
forward from a namespace joined by path in the version Debian 12 ships.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from coracle.runtime import syscalls as sc

log = logging.getLogger("coracle")
Binding = tuple[str, int]  # host address, port (TCP)
_CHUNK = 1 << 20


def _inside(netns: str) -> socket.socket:
    """A TCP socket of the rootless network namespace (setns is per thread for networks)."""
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWNET)
    finally:
        os.close(fd)
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Move bytes from src to dst through a kernel pipe until src ends, then half-close dst."""
    r, w = os.pipe()
    try:
        while True:
            n = os.splice(src.fileno(), w, _CHUNK, flags=os.SPLICE_F_MOVE | os.SPLICE_F_MORE)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n, flags=os.SPLICE_F_MOVE | os.SPLICE_F_MORE)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _connect(client: socket.socket, port: int, netns: str) -> None:
    """One forwarded connection: its own thread, moved into the namespace to connect."""
    with client, _inside(netns) as inner:
        try:
            inner.connect(("127.0.0.1", port))
        except OSError:
            return
        for s in (client, inner):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pipe, args=(inner, client), daemon=True)
        back.start()
        _pipe(client, inner)
        back.join()


class Listeners:
    """The host-side listeners, one per published binding."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.open: dict[Binding, socket.socket] = {}

    def _accept(self, listener: socket.socket, port: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the port was unpublished
            threading.Thread(target=_connect, args=(client, port, self.netns), daemon=True).start()

    def set(self, wanted: Iterable[Binding]) -> dict[str, str]:
        """Open the new bindings, close the ones no longer wanted; errors by binding."""
        wanted = set(wanted)
        for binding in set(self.open) - wanted:
            self.open.pop(binding).close()
        errors = {}
        for addr, port in wanted - set(self.open):
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # "::" beside "0.0.0.0", as Docker records both
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind((addr, port))
                listener.listen(512)
            except OSError as exc:
                listener.close()
                errors[f"{addr}:{port}"] = exc.strerror or str(exc)
                continue
            self.open[(addr, port)] = listener
            threading.Thread(target=self._accept, args=(listener, port), daemon=True).start()
        return errors


def serve(path: str, netns: str) -> None:
    """The keeper's loop: one JSON request per connection, {"ports": [[addr, port], ...]}."""
    listeners = Listeners(netns)
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
                errors = listeners.set((str(a), int(p)) for a, p in request["ports"])
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


def bindings_of(records: Iterable[dict]) -> list[Binding]:
    """The TCP host bindings of running containers, from their records' NetworkSettings.Ports."""
    found = []
    for rec in records:
        if not rec["State"].get("Running"):
            continue
        for key, hosts in ((rec.get("NetworkSettings") or {}).get("Ports") or {}).items():
            if not key.endswith("/tcp"):
                continue
            for h in hosts or []:
                if h.get("HostPort"):
                    found.append((h.get("HostIp") or "0.0.0.0", int(h["HostPort"])))
    return found


def sync(forwarder: Forwarder, records: Callable[[], list[dict]]) -> None:
    """Publish what the running containers ask for now; a port the user may not bind is logged."""
    try:
        failed = forwarder.publish(bindings_of(records()))
    except OSError as exc:
        log.error("published ports not forwarded to the host: the rootless holder does not answer (%s)", exc)
        return
    for binding, why in failed.items():
        log.error("published port %s cannot be opened on the host: %s", binding, why)


async def follow(bus: Any, records: Callable[[], list[dict]], forwarder: Forwarder) -> None:
    """Keep the host's listeners in step with the containers: at start, then on every start and stop."""
    sub = bus.subscribe()
    try:
        await asyncio.to_thread(sync, forwarder, records)
        while True:
            event = await sub.get()
            if event["Type"] == "container" and event["Action"] in ("start", "die"):
                await asyncio.to_thread(sync, forwarder, records)
    finally:
        sub.close()
