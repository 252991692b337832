"""Containers' outbound TCP, relayed from the user's host network namespace instead of pasta.

pasta carries a container's connection to the outside by copying every frame
of its tap into a socket of the user's host namespace, in one single-threaded
process: the bound of the container -> outside path (docs/performance.md).
Here the namespaces keeper (holder.py), which is in the host namespace and
root of the rootless one, ends each such connection inside and opens it
again outside, as pasta's own TCP does, and splices the two in the kernel.
In the rootless network namespace:

    table ip coracle_outbound
      syn (filter, -160)      iif != UPLINK  tcp SYN  fib daddr oif UPLINK  mark set QUEUED
      prerouting (nat)        the same, mark not PASS/REFUSED/UNREACHABLE:  redirect to :PORT
      forward (filter, -10)   mark REFUSED: tcp reset;  mark UNREACHABLE: icmp host-unreachable
    table ip mangle (iptables: this kernel has nft's queue only through xt)
      PREROUTING              mark QUEUED: NFQUEUE QUEUE --queue-bypass

1. The container's SYN waits in the queue (nfqueue.py) while the keeper
   connects, from the host namespace, to where it was going.
2. Then the SYN goes on: connected, it is redirected to the keeper's listener
   on PORT, and the accepted socket is spliced to the one already connected;
   refused (or any failure), it is answered with a RST, so the container's
   connect() fails with ECONNREFUSED; unreachable, with ICMP host-unreachable.
   A SYN from a bridge that is not the daemon's or is an `internal` network's
   is marked PASS and left to the daemon's forward chain, which keeps internal
   networks in, exactly as before.
3. Only what the namespace would route out through pasta's tap is taken:
   traffic between containers and to the namespace's own addresses (published
   ports, the DNS resolver) is untouched; UDP, ICMP and IPv6 go through pasta.

What a container reaches is what pasta gave it, no more: the outer socket is
opened by the keeper as the user in the host namespace, where it holds no
privilege (the user's own connect()); the destinations are those the
namespace routes out through pasta, which are not its local ones (pasta
copies the host's address into the namespace, so connections to it stay
inside, as before), and loopback, wildcard, multicast and broadcast ones are
refused (pasta runs with --no-map-gw: the user's localhost services were
never reachable, and stay so).

The rules, the queue and the listener live as long as the keeper, that is as
long as the namespaces: they survive every daemon restart and go with the
set. If any of them cannot be made, nothing is installed and outbound TCP
stays with pasta. (nftables' tproxy would keep the destination without NAT,
but the bridges hand packets to the prerouting hook before the IP layer,
which drops the socket tproxy assigned: br_netfilter.)
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import nftables

from coracle.network.firewall.nftables import TABLE as DAEMON_TABLE
from coracle.rootless.nfqueue import Packet, Queue
from coracle.rootless.ports import Inside, join

TABLE_NAME = "coracle_outbound"
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
QUEUE = 0xC0AC
QUEUED, PASS, REFUSED, UNREACHABLE = 0xC0B0, 0xC0B1, 0xC0B2, 0xC0B3  # packet marks, see above
BACKLOG = 512
STALE = 60.0  # seconds a connected outer socket waits for its container's handshake to finish
UNREACHABLE_ERRORS = (errno.EHOSTUNREACH, errno.ENETUNREACH)

Key = tuple[str, int, str, int]  # the container's address and port, where it connects to


def _match(left: object, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _rules(uplink: int, port: int) -> list[dict]:
    t = {"family": "ip", "table": TABLE_NAME}
    mark = {"meta": {"key": "mark"}}
    outgoing = [_match({"meta": {"key": "iif"}}, uplink, "!="), _match({"meta": {"key": "l4proto"}}, "tcp"),
                _match({"fib": {"result": "oif", "flags": ["daddr"]}}, uplink)]
    syn = _match({"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "ack"]]}, "syn")
    chains = (("syn", "filter", -160), ("prerouting", "nat", -100), ("forward", "filter", -10))
    return [
        {"add": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"delete": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"add": {"table": {"family": "ip", "name": TABLE_NAME}}},
        *({"add": {"chain": {**t, "name": name, "type": kind, "hook": "forward" if name == "forward" else "prerouting",
                             "prio": prio, "policy": "accept"}}} for name, kind, prio in chains),
        {"add": {"rule": {**t, "chain": "syn", "expr": [*outgoing, syn, {"mangle": {"key": mark, "value": QUEUED}}]}}},
        {"add": {"rule": {**t, "chain": "prerouting", "expr": [
            *outgoing, _match(mark, {"set": [PASS, REFUSED, UNREACHABLE]}, "!="), {"redirect": {"port": port}}]}}},
        {"add": {"rule": {**t, "chain": "forward", "expr": [
            _match(mark, REFUSED), {"reject": {"type": "tcp reset"}}]}}},
        {"add": {"rule": {**t, "chain": "forward", "expr": [
            _match(mark, UNREACHABLE), {"reject": {"type": "icmp", "expr": "host-unreachable"}}]}}},
    ]


def _queue_rule() -> list[str]:
    iptables = shutil.which("iptables", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "iptables"
    return [iptables, "-w", "-t", "mangle", "-A", "PREROUTING", "-m", "mark", "--mark", str(QUEUED),
            "-j", "NFQUEUE", "--queue-num", str(QUEUE), "--queue-bypass"]


def reachable(addr: str) -> bool:
    """Whether the keeper may connect to `addr` for a container: a unicast address that is not
    the host's loopback or wildcard (pasta, with --no-map-gw, reaches none of those either)."""
    ip = ipaddress.ip_address(addr)
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved
                or ip == ipaddress.IPv4Address("255.255.255.255"))


def _set_elements(nft: nftables.Nftables, name: str) -> set[str]:
    rc, out, err = nft.json_cmd({"nftables": [{"list": {"set": {"family": "ip", "table": DAEMON_TABLE,
                                                                  "name": name}}}]})
    if rc:
        raise OSError(f"the daemon's {name} set: {str(err).strip()}")
    found = next(o["set"] for o in out["nftables"] if "set" in o)
    return {str(e) for e in found.get("elem", [])}


class Ingress:
    """Whether SYNs coming in by an interface are the relay's: from a bridge of the daemon (its
    `bridges` set) that is not an `internal` network's, whose containers the daemon's forward
    chain keeps inside. Answers are kept by interface index, which the kernel does not reuse,
    as a bridge's network never changes its mind about being internal."""

    def __init__(self, inside: Inside) -> None:
        self.inside = inside
        self.known: dict[int, bool] = {}

    def allows(self, ifindex: int) -> bool:
        if ifindex not in self.known:
            answer: list[bool] = []

            def look() -> None:  # a thread inside: names and sets are the namespace's
                self.inside.enter()
                with contextlib.suppress(OSError, StopIteration, KeyError, TypeError):
                    name = socket.if_indextoname(ifindex)
                    nft = nftables.Nftables()
                    answer.append(name in _set_elements(nft, "bridges") and name not in _set_elements(nft, "internal"))

            t = threading.Thread(target=look)
            t.start()
            t.join()
            if not answer:
                return False  # the daemon's table is not there (yet): ask again next time
            self.known[ifindex] = answer[0]
        return self.known[ifindex]


def _key(packet: Packet) -> Key:
    """(source, source port, destination, destination port) of a queued IPv4 TCP packet."""
    b = packet.payload
    ihl = (b[0] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", b, ihl)
    return socket.inet_ntoa(b[12:16]), sport, socket.inet_ntoa(b[16:20]), dport


def original_destination(s: socket.socket) -> tuple[str, int] | None:
    """Where the container connected to, before the redirect (conntrack keeps it); None for a
    connection made to the listener itself, which no container has a reason to make."""
    raw = s.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack_from("!2xH4s", raw)
    dest = (socket.inet_ntoa(addr), port)
    return None if dest == s.getsockname()[:2] else dest


def _reset(s: socket.socket) -> None:
    """Close with a RST: the container learns at once that its connection is gone."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class Relay:
    """The keeper's side: SYNs from the queue, connections from the listener."""

    def __init__(self, queue: Queue, listener: socket.socket, ingress: Ingress) -> None:
        self.queue, self.listener, self.ingress = queue, listener, ingress
        self.lock = threading.Lock()
        self.connecting: set[Key] = set()
        self.connected: dict[Key, tuple[socket.socket, float]] = {}

    def start(self) -> None:
        """From a thread of the host's namespace: every thread made from these is there too."""
        threading.Thread(target=self._syns, daemon=True).start()
        threading.Thread(target=self._accept, daemon=True).start()

    def _syns(self) -> None:
        while True:
            try:
                packets = self.queue.packets()
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue  # some SYNs were dropped: their retransmissions come back
                print(f"outbound TCP queue: {exc}; new connections wait for their timeout", flush=True)
                return
            self._forget_stale()
            for packet in packets:
                with contextlib.suppress(OSError, struct.error):
                    self._syn(packet)

    def _syn(self, packet: Packet) -> None:
        key = _key(packet)
        with self.lock:
            if key in self.connecting:
                self.queue.verdict(packet, False)  # a retransmission while the first one waits
                return
            if key in self.connected:
                self.queue.verdict(packet, True)  # the handshake inside is under way
                return
            if not self.ingress.allows(packet.indev):
                self.queue.verdict(packet, True, PASS)
                return
            if not reachable(key[2]):
                self.queue.verdict(packet, True, REFUSED)
                return
            self.connecting.add(key)
        threading.Thread(target=self._connect, args=(packet, key), daemon=True).start()

    def _connect(self, packet: Packet, key: Key) -> None:
        outer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            outer.connect(key[2:])
        except OSError as exc:
            outer.close()
            with self.lock:
                self.connecting.discard(key)
            self.queue.verdict(packet, True, UNREACHABLE if exc.errno in UNREACHABLE_ERRORS else REFUSED)
            return
        with self.lock:
            self.connecting.discard(key)
            self.connected[key] = (outer, time.monotonic())
        self.queue.verdict(packet, True)

    def _forget_stale(self) -> None:
        """Outer connections whose container never finished its handshake (it went away)."""
        now = time.monotonic()
        with self.lock:
            stale = [k for k, (_, since) in self.connected.items() if now - since > STALE]
            for k in stale:
                _reset(self.connected.pop(k)[0])

    def _accept(self) -> None:
        while True:
            try:
                inner, peer = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(inner, peer), daemon=True).start()

    def _relay(self, inner: socket.socket, peer: tuple[str, int]) -> None:
        """One container connection: splice it to the outer one both ways until both ends are done."""
        try:
            dest = original_destination(inner)
        except OSError:
            dest = None
        with self.lock:
            found = self.connected.pop((*peer[:2], *dest), None) if dest else None
        if found is None:
            _reset(inner)
            return
        with inner, found[0] as outer:
            join(inner, outer)


def start(inside: Inside, uplink: int) -> None:
    """Open the queue and the listener and install the rules inside, then relay from threads of
    the calling one's (the host's) namespace. A refusal is logged and leaves TCP to pasta."""
    made: list[Relay] = []

    def install() -> None:
        inside.enter()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        queue = None
        try:
            listener.bind(("0.0.0.0", 0))
            listener.listen(BACKLOG)
            queue = Queue(QUEUE)
            done = subprocess.run(_queue_rule(), capture_output=True, text=True)  # forked here: inside
            if done.returncode:
                raise OSError(f"iptables: {done.stderr.strip()}")
            rc, _, err = nftables.Nftables().json_cmd({"nftables": _rules(uplink, listener.getsockname()[1])})
            if rc:
                raise OSError(f"nftables refused the rules: {str(err).strip()}")
        except OSError as exc:
            listener.close()
            if queue:
                queue.sock.close()
            print(f"outbound TCP stays with pasta: {exc}", flush=True)
            return
        made.append(Relay(queue, listener, Ingress(inside)))

    t = threading.Thread(target=install)
    t.start()
    t.join()
    if made:
        made[0].start()
