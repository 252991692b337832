"""A container must not reach the host's loopback-only services (CVE-2020-8558 class).

The bridges carry route_localnet=1 so that the host's own connections to
ports published on 127.0.0.1 can be DNAT'd into them. Without a guard, a
process in a default container (it holds CAP_NET_RAW) sends an Ethernet frame
to the gateway's MAC with destination 127.0.0.1 and the host delivers it to
its loopback services. The sender here is a socket opened in the container's
network namespace, exactly what a process of the container could open.
"""

from __future__ import annotations

from collections.abc import Callable
import json
import socket
import struct
import time
from contextlib import contextmanager
from collections.abc import Iterator

import pytest

from coracle.netns import netns as enter
from harness import Daemon

ETH_P_IP = 0x0800
SYN, ACK = 0x02, 0x10


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0x4000, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + payload


def _l4_checksum(src: str, dst: str, proto: int, segment: bytes) -> int:
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(segment))
    return _checksum(pseudo + segment)


def udp_packet(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    segment = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    segment = segment[:6] + struct.pack("!H", _l4_checksum(src, dst, socket.IPPROTO_UDP, segment)) + segment[8:]
    return _ipv4(src, dst, socket.IPPROTO_UDP, segment)


def tcp_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, 0x10203040, 0, 5 << 4, SYN, 64240, 0, 0)
    segment = segment[:16] + struct.pack("!H", _l4_checksum(src, dst, socket.IPPROTO_TCP, segment)) + segment[18:]
    return _ipv4(src, dst, socket.IPPROTO_TCP, segment)


class ContainerLink:
    """The container's eth0 as a raw AF_PACKET socket (what CAP_NET_RAW allows inside it)."""

    def __init__(self, pid: int, mac: str, ip: str, gateway_mac: str) -> None:
        with enter(f"/proc/{pid}/ns/net"):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            self.sock.bind(("eth0", ETH_P_IP))
        self.ip = ip
        self.header = bytes.fromhex(gateway_mac.replace(":", "")) + bytes.fromhex(mac.replace(":", "")) + \
            struct.pack("!H", ETH_P_IP)

    def send(self, packet: bytes) -> None:
        self.sock.send(self.header + packet)

    def syn_ack_from(self, ip: str, port: int, timeout: float) -> bool:
        """Whether a SYN-ACK from ip:port comes back to the container within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                frame = self.sock.recv(2048)
                packet = frame[14:]
                if packet[9] != socket.IPPROTO_TCP or packet[12:16] != socket.inet_aton(ip):
                    continue
                tcp = packet[(packet[0] & 0x0F) * 4:]
                sport, flags = struct.unpack("!H", tcp[:2])[0], tcp[13]
                if sport == port and flags & (SYN | ACK) == SYN | ACK:
                    return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@contextmanager
def host_socket(daemon: Daemon, kind: int, ip: str) -> Iterator[socket.socket]:
    """A socket of the daemon's "host", bound to ip on a free port (TCP ones listen)."""
    with enter(f"/run/netns/{daemon.netns}"):
        sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.bind((ip, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(8)
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket, timeout: float) -> bytes | None:
    sock.settimeout(timeout)
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None


@pytest.fixture
def container(daemon: Daemon, unique: Callable[[str], str]) -> Iterator[dict]:
    name = unique("lo-")
    daemon.docker("run", "-d", "--name", name, "busybox", "sleep", "300")
    try:
        yield json.loads(daemon.docker("inspect", name).stdout)[0]
    finally:
        daemon.docker("rm", "-f", name, check=False)


def gateway_mac(daemon: Daemon, gateway: str) -> str:
    links = json.loads(daemon.netns_exec("ip", "-j", "-4", "addr", "show").stdout)
    name = next(link["ifname"] for link in links if any(a["local"] == gateway for a in link["addr_info"]))
    return next(link["address"] for link in json.loads(daemon.netns_exec("ip", "-j", "link", "show", name).stdout))


def test_container_raw_frames_do_not_reach_host_loopback_services(daemon: Daemon, container: dict) -> None:
    net = container["NetworkSettings"]["Networks"]["bridge"]
    ip, gateway = net["IPAddress"], net["Gateway"]
    link = ContainerLink(container["State"]["Pid"], net["MacAddress"], ip, gateway_mac(daemon, gateway))
    try:
        with host_socket(daemon, socket.SOCK_DGRAM, "127.0.0.1") as udp_lo, \
                host_socket(daemon, socket.SOCK_DGRAM, gateway) as udp_gw, \
                host_socket(daemon, socket.SOCK_STREAM, "127.0.0.1") as tcp_lo, \
                host_socket(daemon, socket.SOCK_STREAM, gateway) as tcp_gw:
            # the sender works: the same frames addressed to the gateway arrive
            link.send(udp_packet(ip, gateway, 40000, udp_gw.getsockname()[1], b"to-gateway"))
            assert received(udp_gw, 5) == b"to-gateway"
            link.send(tcp_syn(ip, gateway, 40001, tcp_gw.getsockname()[1]))
            assert link.syn_ack_from(gateway, tcp_gw.getsockname()[1], 5)
            # the attack: the gateway's MAC, destination 127.0.0.1
            link.send(udp_packet(ip, "127.0.0.1", 40002, udp_lo.getsockname()[1], b"to-loopback"))
            link.send(tcp_syn(ip, "127.0.0.1", 40003, tcp_lo.getsockname()[1]))
            reached = {"tcp": link.syn_ack_from("127.0.0.1", tcp_lo.getsockname()[1], 1),
                       "udp": received(udp_lo, 0.5)}
            assert reached == {"tcp": False, "udp": None}
    finally:
        link.close()


def _connect_when_served(ip: str, port: int) -> socket.socket:
    """A connection to ip:port once the container's server listens (refused until then)."""
    for _ in range(200):
        try:
            return socket.create_connection((ip, port), timeout=10)
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answers on {ip}:{port}")


def test_port_published_on_localhost_still_serves_the_host(daemon: Daemon, unique: Callable[[str], str]) -> None:
    name = unique("lo-")
    with host_socket(daemon, socket.SOCK_STREAM, "127.0.0.1") as probe:
        port = probe.getsockname()[1]  # a port free on the host's loopback
    daemon.docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "busybox",
                  "httpd", "-f", "-p", "8080", "-h", "/etc")
    try:
        with enter(f"/run/netns/{daemon.netns}"):
            client = _connect_when_served("127.0.0.1", port)
        with client:
            client.sendall(b"GET /passwd HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := client.recv(4096):
                reply += chunk
        assert b"root:x:0:0" in reply
    finally:
        daemon.docker("rm", "-f", name, check=False)
