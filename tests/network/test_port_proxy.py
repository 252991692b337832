"""Published ports on IPv6 for containers without an IPv6 address, through the one port proxy process.

Docker behaviour checked (userland proxy on, its default): `-p 8080:80` answers
on 0.0.0.0 and on [::] for an IPv4-only container, so `curl http://[::1]:8080`
works; `-p [::1]:8081:80` answers on ::1 only and `-p 127.0.0.1:8082:80` on
127.0.0.1 only; behind the proxy the container sees the bridge's gateway as
the client. A port a process of the host holds on [::] is refused with
Docker's message and nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from networld import UPLINK6_HOST, UPLINK_HOST, UPLINK_OUTSIDE, World, ask, serving

from coracle.errors import Conflict
from coracle.netns import netns as enter
from coracle.network import NetworkManager


def proxy_pid(world: World) -> int | None:
    try:
        return int((Path(world.tmp) / "exec" / "network" / "port-proxy.pid").read_text())
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"coracle.network.portproxy" in f.read()
    except OSError:
        return False


def sockets(pid: int) -> int:
    """How many sockets the process holds."""
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))


def ends(pid: int) -> bool:
    """Whether the process ends (and is reaped) within a generous while."""
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not alive(pid)


def test_an_ipv4_only_container_answers_on_ipv6_through_one_process(world: World) -> None:
    gateway = world.net.inspect("bridge")["IPAM"]["Config"][0]["Gateway"]
    c = world.container(ports={"80/tcp": [{"HostPort": "8080"}], "53/udp": [{"HostPort": "5353"}],
                               "81/tcp": [{"HostIp": "::1", "HostPort": "8081"}],
                               "82/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8082"}]})
    assert c.settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                              {"HostIp": "::", "HostPort": "8080"}],
                                   "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"},
                                              {"HostIp": "::", "HostPort": "5353"}],
                                   "81/tcp": [{"HostIp": "::1", "HostPort": "8081"}],
                                   "82/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8082"}]}
    with serving((c.ns, "tcp", 80), (c.ns, "udp", 53), (c.ns, "tcp", 81), (c.ns, "tcp", 82)):
        assert ask(world.outside, "tcp", UPLINK6_HOST, 8080) == gateway  # through the proxy
        assert ask(world.host, "tcp", "::1", 8080) == gateway  # clients resolving localhost to ::1
        assert ask(world.outside, "udp", UPLINK6_HOST, 5353) == gateway
        assert ask(world.outside, "tcp", UPLINK_HOST, 8080) == UPLINK_OUTSIDE  # IPv4: DNAT as before
        assert ask(world.host, "tcp", "::1", 8081) == gateway
        assert ask(world.outside, "tcp", UPLINK6_HOST, 8081, timeout=0.5) is None  # ::1 only
        assert ask(world.host, "tcp", "::1", 8082, timeout=0.5) is None  # 127.0.0.1 only
    pid = proxy_pid(world)
    assert pid and alive(pid)
    with open(f"/proc/{pid}/status") as f:
        assert "CapEff:\t0000000000000000\n" in f.read()  # it holds no privilege over anything
    assert sockets(pid) >= 4  # its control socket and the three IPv6 ports, in this one process

    world.stop(c)
    assert ask(world.host, "tcp", "::1", 8080, timeout=0.5) is None  # its last port gone, nothing answers
    assert sockets(pid) == 1  # it stays, holding only its control socket

    c = world.container(ports={"80/tcp": [{"HostPort": "8080"}]})
    assert proxy_pid(world) == pid  # the next `run -p` starts no process
    with serving((c.ns, "tcp", 80)):
        assert ask(world.host, "tcp", "::1", 8080) == gateway
    world.stop(c)
    world.net.close()  # the daemon stops: serving nothing, the proxy goes too
    assert ends(pid) and proxy_pid(world) is None


def test_a_port_held_on_ipv6_by_the_host_is_refused_and_nothing_is_left(world: World) -> None:
    with enter(world.host):
        holder = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::", 8090))
        holder.listen(1)
        with pytest.raises(Conflict, match=r"Bind for \[::\]:8090 failed: address already in use"):
            world.container(ports={"80/tcp": [{"HostPort": "8090"}]})
    assert world.net.ports.all() == [] and world.map_elements("any_addr") == []
    assert proxy_pid(world) is None
    c = world.container(ports={"80/tcp": [{"HostPort": "8090"}]})  # free again: nothing held it
    with serving((c.ns, "tcp", 80)):
        assert ask(world.outside, "tcp", UPLINK_HOST, 8090) == UPLINK_OUTSIDE


def test_ipv6_ports_keep_answering_while_the_daemon_is_away_and_are_adopted(world: World, tmp_path: Path) -> None:
    gateway = world.net.inspect("bridge")["IPAM"]["Config"][0]["Gateway"]
    c = world.container(ports={"80/tcp": [{"HostPort": "8080"}]})
    pid = proxy_pid(world)
    assert pid is not None
    with serving((c.ns, "tcp", 80)):
        world.net.close()  # the daemon goes away; the proxy stays
        assert ask(world.host, "tcp", "::1", 8080) == gateway
        with enter(world.host):
            world.net = NetworkManager(world.store, str(tmp_path / "exec"), resolv_conf=str(tmp_path / "resolv.conf"))
        world.net.start()
        assert world.net.reconcile({c.id: c.pid}) == {}  # what it serves is what the store reserves
        assert proxy_pid(world) == pid and alive(pid)  # adopted, not replaced
        assert ask(world.host, "tcp", "::1", 8080) == gateway
        # a proxy killed meanwhile: the next daemon start serves the ports again
        os.kill(pid, signal.SIGKILL)
        assert ends(pid)
        world.net.ports.restore()
        assert ask(world.host, "tcp", "::1", 8080) == gateway
    world.stop(c)


def test_a_bulk_transfer_through_the_proxy_arrives_whole_both_ways(world: World) -> None:
    """8 MiB echoed by the container through [::1]: every byte back in order, and the client's half-close
    reaches the container (its echo ends), as through Docker's proxy."""
    c = world.container(ports={"80/tcp": [{"HostPort": "8080"}]})
    with enter(c.ns):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("0.0.0.0", 80))
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    payload = os.urandom(8 << 20)
    received = bytearray()
    with server:
        echoing = threading.Thread(target=echo)
        echoing.start()
        with enter(world.host):
            client = socket.create_connection(("::1", 8080), timeout=30)
        with client:
            def send() -> None:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)

            sending = threading.Thread(target=send)
            sending.start()
            while data := client.recv(1 << 16):
                received += data
            sending.join()
        echoing.join()
    assert len(received) == len(payload) and bytes(received) == payload
    world.stop(c)
