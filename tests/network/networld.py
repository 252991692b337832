"""A small world of network namespaces for the network layer's tests.

    outside (LAN peer, 198.51.100.2, 2001:db8:51::2) ---veth--- host (198.51.100.1, 2001:db8:51::1):
                                                 NetworkManager runs here
                                                 |-- bridges, veths, nft table `ip coracle`
                                                 `-- containers: `unshare -n sleep` processes

The manager is constructed inside the throwaway "host" namespace (it keeps a
handle on the namespace it was built in and opens every socket there), so
nothing touches the machine's own network. Traffic is made with Python
sockets created inside the relevant namespace (`coracle.netns`), and the
independent witnesses are `ip -j` and `nft -j` run in the host namespace.
Everything is removed in finalizers, even after failures.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterator

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from coracle.engine.container import Container as Record
from coracle.engine.netrequest import network_request
from coracle.network import NetworkManager
from coracle.network.driver import EndpointOptions
from coracle.netns import netns as enter
from coracle.store import Store

UPLINK_HOST = "198.51.100.1"
UPLINK_OUTSIDE = "198.51.100.2"
UPLINK6_HOST = "2001:db8:51::1"
UPLINK6_OUTSIDE = "2001:db8:51::2"


def family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


# ----- traffic --------------------------------------------------------------


class Server:
    """Echo-the-peer server: answers each TCP connection / UDP datagram with the client's address.

    Bound to "::" it serves both families (IPv4 clients then show as ::ffff:a.b.c.d)."""

    def __init__(self, ns: str, proto: str, port: int, ip: str = "0.0.0.0") -> None:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with enter(ns):
            self.sock = socket.socket(family(ip), kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        if proto == "tcp":
            self.sock.listen(16)
        self.proto = proto
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.proto == "tcp":
                    conn, peer = self.sock.accept()
                    with conn:
                        conn.sendall(peer[0].encode())
                else:
                    _, peer = self.sock.recvfrom(512)
                    self.sock.sendto(peer[0].encode(), peer)
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        self.sock.close()


def ask(ns: str, proto: str, ip: str, port: int, timeout: float = 1.5) -> str | None:
    """Connect from inside `ns`; the address the server saw us as, or None if nothing answered."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with enter(ns):
        sock = socket.socket(family(ip), kind)
    with sock:
        sock.settimeout(timeout)
        try:
            if proto == "tcp":
                sock.connect((ip, port))
                return sock.recv(64).decode() or None
            sock.sendto(b"hi", (ip, port))
            return sock.recv(64).decode() or None
        except OSError:
            return None


@contextmanager
def serving(*specs: tuple) -> Iterator[list[Server]]:
    """Run Servers (ns, proto, port) for the block, closed afterwards even on failure."""
    servers: list[Server] = []
    try:
        for spec in specs:
            servers.append(Server(*spec))
        yield servers
    finally:
        for server in servers:
            server.close()


def dns_query(ns: str, name: str, qtype: str = "A", tcp: bool = False) -> DNSRecord:
    packet = DNSRecord.question(name, qtype).pack()
    with enter(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(5)
        if tcp:
            sock.connect(("127.0.0.11", 53))
            sock.sendall(len(packet).to_bytes(2, "big") + packet)
            size = int.from_bytes(sock.recv(2), "big")
            data = b""
            while len(data) < size:
                data += sock.recv(size - len(data))
        else:
            sock.connect(("127.0.0.11", 53))  # connected: a closed port is refused at once
            sock.send(packet)
            data = sock.recv(4096)
    return DNSRecord.parse(data)


def answers(record: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in record.rr]


class FakeUpstream:
    """A resolver on the LAN peer: ext.example.test -> 203.0.113.7, NXDOMAIN otherwise."""

    def __init__(self, ns: str) -> None:
        with enter(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((UPLINK_OUTSIDE, 53))
        self.sock.settimeout(0.2)
        self.asked: list[str] = []  # every name it was asked, in order
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            q = DNSRecord.parse(data)
            self.asked.append(str(q.q.qname))
            reply = q.reply()
            if str(q.q.qname) == "ext.example.test.":
                reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("203.0.113.7"), ttl=60))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            self.sock.sendto(reply.pack(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


# ----- the world -------------------------------------------------------------


def _record(rec: dict[str, Any]) -> Record:
    """The engine's typed record of a test container's (partial) stored record."""
    return Record.from_stored({"Id": "", "Name": "", "Created": "", "Image": "", "Config": {}, "HostConfig": {},
                               "State": {"Status": "created", "Running": False}, **rec})


@dataclass
class Container:
    """A process in its own network namespace, as the engine would hand it to attach()."""

    id: str
    name: str
    proc: subprocess.Popen
    rec: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def ip(self, network: str = "bridge") -> str:
        return self.settings["Networks"][network]["IPAddress"]

    def ip6(self, network: str) -> str:
        return self.settings["Networks"][network]["GlobalIPv6Address"]


class World:
    def __init__(self, host: str, outside: str, store: Store, manager: NetworkManager, tmp: str,
                 unique: Callable[[str], str]) -> None:
        self.host, self.outside = f"/run/netns/{host}", f"/run/netns/{outside}"
        self.host_name, self.outside_name = host, outside
        self.store, self.net, self.tmp, self.unique = store, manager, tmp, unique
        self.containers: list[Container] = []

    def container(self, network: str = "bridge", *, ports: dict | None = None, exposed: dict | None = None,
                  publish_all: bool = False, endpoints: dict | None = None, hostname: str = "",
                  attach: bool = True, **host_config: Any) -> Container:
        cid = os.urandom(32).hex()
        name = self.unique("c")
        proc = subprocess.Popen(["unshare", "-n", "sleep", "1000"])
        rec = {"Id": cid, "Name": "/" + name,
               "Config": {"Hostname": hostname or cid[:12], "Domainname": "", "ExposedPorts": exposed or {}},
               "HostConfig": {"NetworkMode": network, "PortBindings": ports or {}, "PublishAllPorts": publish_all,
                              **host_config},
               "NetworkingConfig": {"EndpointsConfig": endpoints or {}},
               "NetworkSettings": {"Networks": {}}}
        c = Container(cid, name, proc, rec)
        self.containers.append(c)
        # unshare execs sleep once the new namespace exists; wait until it differs from ours
        mine = os.stat("/proc/self/ns/net").st_ino
        for _ in range(5000):
            if os.stat(c.ns).st_ino != mine and not os.readlink(f"/proc/{c.pid}/exe").endswith("unshare"):
                break
            time.sleep(0.001)
        if attach:
            c.settings = self.attach(rec, c.pid)
            rec["NetworkSettings"] = c.settings
        return c

    # What the engine does around each call of the manager: the request built from the record by the
    # engine's own function, and the answer applied to a copy of the record's NetworkSettings.

    def attach(self, rec: dict[str, Any], pid: int) -> dict[str, Any]:
        return dict(self.net.attach(network_request(_record(rec), pid)).settings)

    def files(self, rec: dict[str, Any], settings: dict[str, Any]) -> dict[str, str]:
        return self.net.files(network_request(_record(rec)), settings).by_path()

    def validate(self, mode: str, host_config: dict[str, Any], endpoints: dict[str, Any]) -> None:
        self.net.validate(network_request(_record({"HostConfig": {**host_config, "NetworkMode": mode},
                                                   "NetworkingConfig": {"EndpointsConfig": endpoints}})))

    def connect(self, rec: dict[str, Any], pid: int | None, ref: str, cfg: dict[str, Any]) -> dict[str, Any]:
        joined = self.net.connect(network_request(_record(rec), pid or 0), ref, EndpointOptions.from_docker(ref, cfg))
        settings = copy.deepcopy(rec.get("NetworkSettings") or {})
        settings.setdefault("Networks", {})[joined.network_name] = dict(joined.settings)
        return settings

    def disconnect(self, rec: dict[str, Any] | str, ref: str, pid: int = 0) -> dict[str, Any] | None:
        """As the engine asks: with the PID of a running container, whose namespace loses the link."""
        if isinstance(rec, str):
            return self.net.disconnect(rec, ref)
        left = self.net.disconnect(network_request(_record(rec), pid), ref)
        settings = copy.deepcopy(rec.get("NetworkSettings") or {})
        for key in left.refs:
            settings.get("Networks", {}).pop(key, None)
            ((rec.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}).pop(key, None)
        settings.update(left.settings)
        return settings

    def rename(self, rec: dict[str, Any], old_name: str) -> None:
        for network, names in self.net.rename(network_request(_record(rec)), old_name).items():
            rec["NetworkSettings"]["Networks"][network]["DNSNames"] = names

    def stop(self, c: Container) -> None:
        """What the engine does when a container exits: kill, then detach."""
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGKILL)
            c.proc.wait()
        self.net.detach(c.id)

    def ip_json(self, *args: str) -> Any:
        return json.loads(sh("ip", "netns", "exec", self.host_name, "ip", "-j", *args).stdout or "[]")

    def veths(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link", "show", "type", "veth")
                if link["ifname"] != "up0"]

    def nft(self, family: str = "ip") -> list[dict[str, Any]]:
        out = sh("ip", "netns", "exec", self.host_name, "nft", "-j", "list", "table", family, "coracle").stdout
        return json.loads(out)["nftables"]

    def map_elements(self, name: str, family: str = "ip") -> list:
        for obj in self.nft(family):
            if "map" in obj and obj["map"]["name"] == name:
                return obj["map"].get("elem", [])
        raise AssertionError(f"no map {name}")

    def set_elements(self, name: str, family: str = "ip") -> list:
        for obj in self.nft(family):
            if "set" in obj and obj["set"]["name"] == name:
                return obj["set"].get("elem", [])
        raise AssertionError(f"no set {name}")

    def rule_count(self) -> int:
        return sum(1 for obj in self.nft() if "rule" in obj)
