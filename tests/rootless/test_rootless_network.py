"""Networking of a rootless daemon: its bridges in the user's rootless network namespace,
pasta to the outside, published ports from the host side, and the four modes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator

import pytest

from rootless_support import LAN_HOST, LAN_PEER, RootlessUser, until

# makes throwaway users with subordinate ids: the root tier
pytestmark = pytest.mark.root


def test_published_port_is_reached_from_the_lan_and_from_the_host(user: RootlessUser) -> None:
    user.docker("run", "-d", "--name", "pub", "-p", "18081:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")
    try:
        name = user.docker("inspect", "-f", "{{.Config.Hostname}}", "pub").stdout.strip()
        url = f"http://{LAN_HOST}:18081/hostname"
        assert until(lambda: user.lan("wget", "-q", "-O-", url, check=False).stdout).strip() == name
        assert user.on_host("wget", "-q", "-O-", "http://127.0.0.1:18081/hostname").stdout.strip() == name
        # the listener on the host belongs to the user, not to root
        listeners = user.on_host("ss", "-Htlnpe", "sport = :18081").stdout
        assert f"uid:{user.uid}" in listeners
    finally:
        user.docker("rm", "-f", "pub")
    assert user.lan("wget", "-q", "-T", "2", "-O-", url, check=False).returncode != 0  # unpublished with it


@contextlib.contextmanager
def _lan_web_server(user: RootlessUser) -> Iterator[str]:
    """A web server on the LAN neighbour; yields the URL of a page saying "on the lan"."""
    www = user.root / "www"
    www.mkdir(exist_ok=True)
    (www / "where").write_text("on the lan\n")
    server = user.lan("sh", "-c", f"busybox httpd -f -p 9999 -h {www} >/dev/null 2>&1 & echo $!")
    try:
        yield f"http://{LAN_PEER}:9999/where"
    finally:
        user.lan("kill", server.stdout.strip(), check=False)


def test_containers_reach_the_outside_through_pasta(user: RootlessUser) -> None:
    with _lan_web_server(user) as url:
        assert user.docker("run", "--rm", "busybox", "wget", "-q", "-O-", url).stdout.strip() == "on the lan"


def test_user_network_resolves_names(user: RootlessUser) -> None:
    user.docker("network", "create", "rlnet")
    try:
        user.docker("run", "-d", "--name", "srv", "--network", "rlnet", "busybox", "httpd", "-f", "-p", "80",
                    "-h", "/etc")
        out = user.docker("run", "--rm", "--network", "rlnet", "busybox", "wget", "-q", "-O-",
                          "http://srv/hostname").stdout
        assert out.strip() == user.docker("inspect", "-f", "{{.Config.Hostname}}", "srv").stdout.strip()
    finally:
        user.docker("rm", "-f", "srv", check=False)
        user.docker("network", "rm", "rlnet", check=False)


def _sees_the_users_host_namespace(user: RootlessUser) -> None:
    """A --network host container is in the user's own network namespace: the same namespace (pasta
    copies the host's address into the rootless one, so an address alone would not tell)."""
    out = user.docker("run", "--rm", "--network", "host", "busybox", "sh", "-c",
                      "readlink /proc/self/ns/net; ls /sys/class/net").stdout.split()
    assert out[0] == f"net:[{os.stat(f'/run/netns/{user.host_ns}').st_ino}]"
    assert "eth0" in out and "coracle0" not in out  # the user's interfaces, none of the rootless bridges


def test_host_mode_is_the_users_host_namespace(user: RootlessUser) -> None:
    _sees_the_users_host_namespace(user)


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_killed_holder_is_replaced_from_the_users_host_namespace(bare_user: RootlessUser) -> None:
    user = bare_user
    user.start_daemon()
    user.docker("run", "-d", "--name", "old", "busybox", "sleep", "600")
    old_pid = int(user.docker("inspect", "-f", "{{.State.Pid}}", "old").stdout)
    with open(f"{user.runtime_dir}/coracle/rootless/holder.json") as f:
        os.kill(json.load(f)["holder"], signal.SIGKILL)  # the namespaces' holder dies without a word
    user.stop_daemon()
    user.start_daemon()
    _sees_the_users_host_namespace(user)
    # the new namespace set works: a bridge container is wired and reaches the LAN through the new pasta
    with _lan_web_server(user) as url:
        assert user.docker("run", "--rm", "busybox", "wget", "-q", "-O-", url).stdout.strip() == "on the lan"
    # the old set's containers ended with their namespaces, as the holder promises (a reboot): its
    # PID 1 is gone, or a zombie until the machine's init, which inherits it, reaps it
    assert _ended(old_pid)
    assert user.docker("inspect", "-f", "{{.State.Running}}", "old").stdout.strip() == "false"


def test_none_and_container_modes(user: RootlessUser) -> None:
    none = user.docker("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in none.splitlines()] == ["lo"]
    user.docker("run", "-d", "--name", "donor", "busybox", "sleep", "60")
    try:
        donor_ip = user.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "donor").stdout.strip()
        out = user.docker("run", "--rm", "--network", "container:donor", "busybox", "ip", "-o", "-4", "addr").stdout
        assert f"{donor_ip}/" in out
    finally:
        user.docker("rm", "-f", "donor")


WHO_SERVER = """
import socket, threading
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", 5000))
    while True:
        _, peer = s.recvfrom(100)
        s.sendto(peer[0].encode(), peer)
threading.Thread(target=udp, daemon=True).start()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("", 5000))
t.listen()
while True:
    c, peer = t.accept()
    c.sendall(peer[0].encode())
    c.close()
"""

WHO_CLIENT = """
import socket, sys
proto, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        with socket.create_connection((addr, port), timeout=2) as s:
            print(s.recv(100).decode())
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            s.sendto(b"who", (addr, port))
            print(s.recv(100).decode())
except OSError:
    pass
"""


def test_published_tcp_and_udp_ports_keep_the_lan_clients_address(user: RootlessUser) -> None:
    host_python = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]
    user.docker("run", "-d", "--name", "who", "-p", "18082:5000/tcp", "-p", "18083:5000/udp", *host_python,
                "busybox", "/usr/bin/python3", "-c", WHO_SERVER)
    try:
        for proto, port in (("tcp", 18082), ("udp", 18083)):
            def ask(proto: str = proto, port: int = port) -> str:
                return user.lan("python3", "-c", WHO_CLIENT, proto, LAN_HOST, str(port)).stdout

            seen = until(ask)
            assert seen.strip() == LAN_PEER, (proto, seen)  # the client's own address, not a gateway's
        # the user's own programs still reach it through loopback (shown as the gateway: loopback cannot leave)
        local = user.on_host("python3", "-c", WHO_CLIENT, "udp", "127.0.0.1", "18083").stdout.strip()
        gateway = user.docker("inspect", "-f", "{{.NetworkSettings.Gateway}}", "who").stdout.strip()
        assert local == gateway
    finally:
        user.docker("rm", "-f", "who")
    gone = user.lan("python3", "-c", WHO_CLIENT, "udp", LAN_HOST, "18083").stdout
    assert gone == ""  # unpublished with the container
