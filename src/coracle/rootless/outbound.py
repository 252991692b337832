"""Containers' outbound TCP, relayed from the user's host network namespace instead of pasta.

pasta carries a container's connection to the outside by copying every frame
of its tap into a socket of the user's host namespace, in one single-threaded
process: the bound of the container -> outside path (docs/performance.md).
Here the namespaces keeper (holder.py), which is in the host namespace and
root of the rootless one, ends each such connection inside and opens it
again outside, as pasta's own TCP does, and the two sockets are spliced in
the kernel:

    table ip coracle_outbound  (the rootless network namespace)
      prerouting  iif != UPLINK  tcp  fib daddr oif UPLINK  jump outbound
      outbound    socket transparent 1                       mark LOCAL  (the relayed connections)
                  SYN                tproxy to 127.0.0.1:PORT  mark LOCAL  (a new one: the keeper's listener)

LOCAL is source_address.py's mark of packets delivered to a socket of the
namespace whatever their address. Only what the namespace would route out
through pasta's tap is taken, so traffic between containers and to the
namespace's own addresses (published ports, the DNS resolver) is untouched;
UDP, ICMP and IPv6 still go through pasta.

What a container reaches is what pasta gave it, no more:
- the outer socket is opened by the keeper as the user, in the host
  namespace, where it holds no privilege: the user's own connect();
- destinations the namespace routes out through pasta are not its local
  ones (pasta copies the host's address into the namespace, so connections to
  it stay inside, as before), and loopback, wildcard, multicast and broadcast
  destinations are refused: pasta runs with --no-map-gw, so the user's
  localhost services were never reachable, and stay so;
- a container of an `internal` network, which the daemon's forward chain
  keeps from going out, is not relayed either (`Policy`).

A connection the outside refuses (or that cannot be made) is reset: the
container's connect() has already succeeded (the kernel answers the SYN
before the keeper can try the destination), so it reads ECONNRESET where
pasta, which answers only once its own connect() completed, gave
ECONNREFUSED.

The listener and the rules live as long as the keeper, that is as long as the
namespaces: they survive every daemon restart and go with the set. If the
keeper's listener were gone, tproxy would find no socket and new connections
would fall through to pasta.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading

import nftables

from coracle.rootless.ports import Inside, splice

TABLE_NAME = "coracle_outbound"
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def _rules(uplink: int, port: int) -> list[dict]:
    t = {"family": "ip", "table": TABLE_NAME}
    return [
        {"add": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"delete": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"add": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"add": {"chain": {**t, "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100,
                           "policy": "accept"}}},
        {"add": {"rule": {**t, "chain": "prerouting", "expr": [
            {"match": {"op": "!=", "left": {"meta": {"key": "iif"}}, "right": uplink}},
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["daddr"]}}, "right": uplink}},
            {"redirect": {"port": port}}]}}},
    ]


def reachable(addr: str) -> bool:
    """Whether the keeper may connect to `addr` for a container: a unicast address that is not
    the host's loopback or wildcard (pasta, with --no-map-gw, reaches none of those either)."""
    ip = ipaddress.ip_address(addr)
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved
                or ip == ipaddress.IPv4Address("255.255.255.255"))


def original_destination(s: socket.socket) -> tuple[str, int] | None:
    """Where the container connected to, before the redirect (conntrack keeps it); None for a
    connection made to the listener itself, which no container has a reason to make."""
    raw = s.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack_from("!2xH4s", raw)
    dest = (socket.inet_ntoa(addr), port)
    return None if dest == s.getsockname()[:2] else dest


def _reset(s: socket.socket) -> None:
    """Close with a RST: the container learns at once that its connection did not go through."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _relay(inner: socket.socket) -> None:
    """One container connection: connect outside, then splice both ways until both ends are done."""
    try:
        dest = original_destination(inner)
    except OSError:
        dest = None
    if dest is None:
        _reset(inner)
        return
    outer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # this thread is in the host namespace
    try:
        if not reachable(dest[0]):
            raise ConnectionRefusedError
        outer.connect(dest)
    except OSError:
        outer.close()
        _reset(inner)
        return
    with inner, outer:
        for s in (inner, outer):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=splice, args=(outer, inner), daemon=True)
        back.start()
        splice(inner, outer)
        back.join()


def _accept(listener: socket.socket) -> None:
    while True:
        try:
            inner, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_relay, args=(inner,), daemon=True).start()


def start(inside: Inside, uplink: int) -> None:
    """Open the listener and install the rules inside, then relay from a thread of the calling
    one's (the host's) namespace. A refusal is logged and leaves outbound TCP to pasta."""
    opened: list[socket.socket] = []

    def install() -> None:
        inside.enter()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("0.0.0.0", 0))
            listener.listen(512)
            rc, _, err = nftables.Nftables().json_cmd({"nftables": _rules(uplink, listener.getsockname()[1])})
            if rc:
                raise OSError(f"nftables refused the rules: {str(err).strip()}")
        except OSError as exc:
            listener.close()
            print(f"outbound TCP stays with pasta: {exc}", flush=True)
            return
        opened.append(listener)

    t = threading.Thread(target=install)
    t.start()
    t.join()
    if opened:
        threading.Thread(target=_accept, args=(opened[0],), daemon=True).start()

