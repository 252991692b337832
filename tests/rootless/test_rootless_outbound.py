"""Containers' connections to the outside from a rootless daemon: TCP relayed by the namespaces
keeper from the user's host namespace (rootless/outbound.py), UDP through pasta, and nothing
of the user's host that pasta did not give them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from rootless_support import LAN_HOST, LAN_PEER, RootlessUser, until

# makes throwaway users with subordinate ids: the root tier
pytestmark = pytest.mark.root

HOST_PYTHON = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]
HELLO, BULK, HOLD, ECHO, LINES = 7000, 7001, 7002, 7003, 7004

LAN_SERVER = """
import hashlib, os, socket, sys, threading
def bulk(c):
    with c:
        got = hashlib.sha256()
        while chunk := c.recv(1 << 20):
            got.update(chunk)
        data = os.urandom(20_000_000)
        c.sendall(f"{got.hexdigest()} {hashlib.sha256(data).hexdigest()}\\n".encode() + data)
def hello(c):
    with c:
        c.sendall(b"lan")
def lines(c):
    with c, c.makefile("rwb", buffering=0) as f:
        for line in f:
            f.write(b"lan " + line)
def hold(c):
    with c:
        while c.recv(100):
            pass
def serve(port, handle):
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("", port))
    t.listen()
    while True:
        threading.Thread(target=handle, args=(t.accept()[0],), daemon=True).start()
def echo(port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("", port))
    while True:
        data, peer = u.recvfrom(100)
        u.sendto(b"echo " + data, peer)
threading.Thread(target=serve, args=(int(sys.argv[4]), hello), daemon=True).start()
threading.Thread(target=serve, args=(int(sys.argv[5]), lines), daemon=True).start()
threading.Thread(target=serve, args=(int(sys.argv[1]), bulk), daemon=True).start()
threading.Thread(target=serve, args=(int(sys.argv[2]), hold), daemon=True).start()
echo(int(sys.argv[3]))
"""

BULK_CLIENT = """
import hashlib, os, socket, sys
data = os.urandom(20_000_000)
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) as s:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := s.recv(1 << 20):
        got += chunk
line, _, back = bytes(got).partition(b"\\n")
received, sent_back = line.decode().split()
print(hashlib.sha256(data).hexdigest() == received, hashlib.sha256(back).hexdigest() == sent_back, len(back))
"""

CONNECT = """
import errno, socket, sys
for target in sys.argv[1:]:
    addr, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((addr, int(port)), timeout=20) as s:
            s.settimeout(20)
            print(target, "answered", s.recv(100).decode() or "nothing")
    except OSError as exc:
        print(target, errno.errorcode.get(exc.errno or 0, type(exc).__name__))
"""

UDP_CLIENT = """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
for _ in range(20):
    u.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        print(u.recv(100).decode())
        break
    except TimeoutError:
        pass
"""


@contextlib.contextmanager
def _lan_servers(user: RootlessUser) -> Iterator[None]:
    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{user.lan_ns}", "python3", "-c", LAN_SERVER,
                               str(BULK), str(HOLD), str(ECHO), str(HELLO), str(LINES)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: user.lan("ss", "-Htln", f"sport = :{HOLD}").stdout)
        yield
    finally:
        server.kill()
        server.wait()


def _in_container(user: RootlessUser, script: str, *args: str) -> str:
    return user.docker("run", "--rm", *HOST_PYTHON, "busybox", "/usr/bin/python3", "-c", script, *args,
                       timeout=180).stdout


def test_outbound_tcp_is_relayed_from_the_users_host_namespace_intact(user: RootlessUser) -> None:
    with _lan_servers(user):
        # 20 MB each way through the relay, checked end to end
        assert _in_container(user, BULK_CLIENT, LAN_PEER, str(BULK)).split() == ["True", "True", "20000000"]
        # a connection held open: on the user's host side it is the keeper's socket, not pasta's
        user.docker("run", "-d", "--name", "holder", *HOST_PYTHON, "busybox", "/usr/bin/python3", "-c",
                    f"import socket, time; s = socket.create_connection(('{LAN_PEER}', {HOLD})); time.sleep(600)")
        try:
            seen = until(lambda: user.on_host("ss", "-Htne", "state", "established", "dst",
                                               f"{LAN_PEER}:{HOLD}").stdout)
            inode = re.search(r"ino:(\d+)", seen)
            assert inode, seen
            with open(f"{user.runtime_dir}/coracle/rootless/holder.json") as f:
                keeper = json.load(f)["namespaces"]
            fds = {os.readlink(f"/proc/{keeper}/fd/{fd}") for fd in os.listdir(f"/proc/{keeper}/fd")}
            assert f"socket:[{inode[1]}]" in fds, (seen, fds)
        finally:
            user.docker("rm", "-f", "holder")


ACROSS_A_RESTART = """
import os, socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as s, s.makefile("rwb", buffering=0) as f:
    for word in (b"before", b"after"):
        while word == b"after" and not os.path.exists("/tmp/go"):
            time.sleep(0.1)
        f.write(word + b"\\n")
        print(f.readline().decode().strip(), flush=True)
"""


def test_outbound_connections_outlive_a_daemon_restart(user: RootlessUser) -> None:
    """The relay is the keeper's, not the daemon's: a connection open while the daemon restarts
    keeps flowing, and new ones are relayed by the next daemon's containers."""
    with _lan_servers(user):
        user.docker("run", "-d", "--name", "across", *HOST_PYTHON, "busybox", "/usr/bin/python3", "-c",
                    ACROSS_A_RESTART, LAN_PEER, str(LINES))
        try:
            assert until(lambda: user.docker("logs", "across").stdout).strip() == "lan before"
            user.stop_daemon()
            user.start_daemon()
            user.docker("exec", "across", "touch", "/tmp/go")
            assert until(lambda: "after" in (out := user.docker("logs", "across").stdout) and out) \
                .split("\n")[:2] == ["lan before", "lan after"]
            assert _in_container(user, CONNECT, f"{LAN_PEER}:{HELLO}").split()[1:] == ["answered", "lan"]
        finally:
            user.docker("rm", "-f", "across")


def test_connection_errors_reach_the_container_as_the_outside_gave_them(user: RootlessUser) -> None:
    """The keeper connects before the container's handshake ends, so a refusal is a refusal, not a
    reset after a connect() that seemed to succeed, and an absent host is unreachable."""
    closed = f"{LAN_PEER}:7009"  # nothing listens there: the LAN peer answers with a RST
    absent = "10.231.0.99:80"  # on the LAN, answering no ARP
    out = dict(line.split() for line in _in_container(user, CONNECT, closed, absent).splitlines())
    assert out == {closed: "ECONNREFUSED", absent: "EHOSTUNREACH"}


def test_udp_still_goes_through_pasta(user: RootlessUser) -> None:
    with _lan_servers(user):
        assert _in_container(user, UDP_CLIENT, LAN_PEER, str(ECHO)).strip() == "echo ping"


def test_containers_do_not_reach_the_users_host_services(user: RootlessUser) -> None:
    """pasta runs with --no-map-gw and copies the host's address into the namespace: services of
    the user's host, on its loopback or on all its addresses, were out of a container's reach,
    and the relay keeps them so (it connects only where the namespace routes out through pasta)."""
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{user.host_ns}", "python3", "-c",
         "import socket, threading\n"
         "def serve(addr):\n"
         "    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "    t.bind(addr); t.listen()\n"
         "    while True:\n"
         "        c, _ = t.accept(); c.sendall(b'host'); c.close()\n"
         "threading.Thread(target=serve, args=(('127.0.0.1', 7004),), daemon=True).start()\n"
         "serve(('0.0.0.0', 7005))\n"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: user.on_host("ss", "-Htln", "sport = :7005").stdout)
        assert user.on_host("python3", "-c", CONNECT, "127.0.0.1:7004").stdout.split()[1] == "answered"  # it is up
        gateway = user.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}",
                              "bridge").stdout.strip()
        targets = [f"{LAN_HOST}:7004", f"{LAN_HOST}:7005", "127.0.0.1:7004", f"{gateway}:7005", "0.0.0.0:7005"]
        out = _in_container(user, CONNECT, *targets)
        assert "answered" not in out, out
        assert len(out.splitlines()) == len(targets)
    finally:
        server.kill()
        server.wait()


def test_an_internal_network_stays_in_even_with_a_route_out(user: RootlessUser) -> None:
    """The daemon's forward chain keeps an internal network's containers in; one that adds a
    default route itself (CAP_NET_ADMIN) must not find a way out through the relay either."""
    user.docker("network", "create", "--internal", "rlinternal")
    try:
        gateway = user.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}",
                              "rlinternal").stdout.strip()
        with _lan_servers(user):
            assert _in_container(user, CONNECT, f"{LAN_PEER}:{HELLO}").split()[1:] == ["answered", "lan"]
            out = user.docker("run", "--rm", "--network", "rlinternal", "--cap-add", "NET_ADMIN", *HOST_PYTHON,
                              "busybox", "sh", "-c", f"ip route add default via {gateway} && "
                              f"/usr/bin/python3 -c '{CONNECT}' {LAN_PEER}:{HELLO}", timeout=180).stdout
        assert out.split()[0] == f"{LAN_PEER}:{HELLO}" and "answered" not in out, out
    finally:
        user.docker("network", "rm", "rlinternal", check=False)
