"""Containers' outbound TCP, relayed from the user's host network namespace instead of pasta.

pasta carries a container's connection to the outside by copying every frame
of its tap into a socket of the user's host namespace, in one single-threaded
process: the bound of the container -> outside path (docs/performance.md).
Here the namespaces keeper (holder.py), which is in the host namespace and
root of the rootless one, ends each such connection inside and opens it
again outside, as pasta's own TCP does, and splices the two in the kernel:

    table ip coracle_outbound  (the rootless network namespace)
      prerouting (nat)  iif != UPLINK  tcp  fib daddr oif UPLINK  redirect to :PORT

PORT is the keeper's listener; the original destination comes back from
conntrack (SO_ORIGINAL_DST), and the redirect's own destination, the address
of the interface the connection came in by, says which bridge it came from.
Only what the namespace would route out through pasta's tap is taken, so
traffic between containers and to the namespace's own addresses (published
ports, the DNS resolver) is untouched; UDP, ICMP and IPv6 still go through
pasta. (nftables' tproxy would keep the destination without NAT, but the
bridges hand packets to the prerouting hook before the IP layer, which drops
the socket tproxy assigned: br_netfilter.)

What a container reaches is what pasta gave it, no more:
- the outer socket is opened by the keeper as the user, in the host
  namespace, where it holds no privilege: the user's own connect();
- destinations the namespace routes out through pasta are not its local
  ones (pasta copies the host's address into the namespace, so connections to
  it stay inside, as before), and loopback, wildcard, multicast and broadcast
  destinations are refused: pasta runs with --no-map-gw, so the user's
  localhost services were never reachable, and stay so;
- a container of an `internal` network, which the daemon's forward chain
  keeps from going out, is not relayed either (`Ingress`).

A connection that cannot be made is reset: the container's connect() has
already succeeded (the kernel answers the SYN before the keeper can try the
destination), so a refusal reads as ECONNRESET on the first read or write,
where pasta, which answers only once its own connect() completed, gave
ECONNREFUSED.

The listener and the rules live as long as the keeper, that is as long as the
namespaces: they survive every daemon restart and go with the set.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading

import nftables
from pyroute2 import IPRoute

from coracle.network.firewall.nftables import TABLE as DAEMON_TABLE
from coracle.rootless.ports import Inside, splice

TABLE_NAME = "coracle_outbound"
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
BACKLOG = 512


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


def _set_elements(nft: nftables.Nftables, name: str) -> set[str]:
    rc, out, err = nft.json_cmd({"nftables": [{"list": {"set": {"family": "ip", "table": DAEMON_TABLE,
                                                                  "name": name}}}]})
    if rc:
        raise OSError(f"the daemon's {name} set: {str(err).strip()}")
    found = next(o["set"] for o in out["nftables"] if "set" in o)
    return {str(e) for e in found.get("elem", [])}


class Ingress:
    """Whether connections redirected to a bridge's address may be relayed: the bridge is one of
    the daemon's (its `bridges` set) and not an `internal` network's, whose containers the
    daemon's forward chain keeps inside. The address is looked up each time (a network removed
    and made again, internal, may get the same one); the answer is kept by interface index,
    which the kernel does not reuse, as a bridge's network never changes its mind about being
    internal."""

    def __init__(self, inside: Inside) -> None:
        self.inside = inside
        self.known: dict[int, bool] = {}
        self.lock = threading.Lock()

    def allows(self, address: str) -> bool:
        answer = [False]

        def look() -> None:  # a thread inside: addresses, names and sets are the namespace's
            self.inside.enter()
            with contextlib.suppress(OSError, StopIteration, KeyError, TypeError, IndexError):
                with IPRoute() as ipr:
                    index = ipr.get_addr(family=socket.AF_INET, address=address)[0]["index"]
                with self.lock:
                    if index not in self.known:
                        name = socket.if_indextoname(index)
                        nft = nftables.Nftables()
                        self.known[index] = name in _set_elements(nft, "bridges") and \
                            name not in _set_elements(nft, "internal")
                    answer[0] = self.known[index]

        t = threading.Thread(target=look)
        t.start()
        t.join()
        return answer[0]


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


def _relay(inner: socket.socket, ingress: Ingress) -> None:
    """One container connection: connect outside, then splice both ways until both ends are done."""
    try:
        dest, bridge = original_destination(inner), inner.getsockname()[0]
    except OSError:
        dest = None
    if dest is None or not ingress.allows(bridge):
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


def _accept(listener: socket.socket, ingress: Ingress) -> None:
    while True:
        try:
            inner, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_relay, args=(inner, ingress), daemon=True).start()


def start(inside: Inside, uplink: int) -> None:
    """Open the listener and install the rules inside, then relay from a thread of the calling
    one's (the host's) namespace. A refusal is logged and leaves outbound TCP to pasta."""
    opened: list[socket.socket] = []

    def install() -> None:
        inside.enter()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("0.0.0.0", 0))
            listener.listen(BACKLOG)
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
        threading.Thread(target=_accept, args=(opened[0], Ingress(inside)), daemon=True).start()

