"""Networking of a rootless daemon: its bridges in the user's rootless network namespace,
pasta to the outside, published ports from the host side, and the four modes."""

from __future__ import annotations

from collections.abc import Callable
import time

from rootless_support import LAN_HOST, LAN_PEER, RootlessUser


def _until(check: Callable[[], str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = check()
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def test_published_port_is_reached_from_the_lan_and_from_the_host(user: RootlessUser) -> None:
    user.docker("run", "-d", "--name", "pub", "-p", "18081:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")
    try:
        name = user.docker("inspect", "-f", "{{.Config.Hostname}}", "pub").stdout.strip()
        url = f"http://{LAN_HOST}:18081/hostname"
        assert _until(lambda: user.lan("wget", "-q", "-O-", url, check=False).stdout).strip() == name
        assert user.on_host("wget", "-q", "-O-", "http://127.0.0.1:18081/hostname").stdout.strip() == name
        # the listener on the host belongs to the user, not to root
        listeners = user.on_host("ss", "-Htlnpe", "sport = :18081").stdout
        assert f"uid:{user.uid}" in listeners
    finally:
        user.docker("rm", "-f", "pub")
    assert user.lan("wget", "-q", "-T", "2", "-O-", url, check=False).returncode != 0  # unpublished with it


def test_containers_reach_the_outside_through_pasta(user: RootlessUser) -> None:
    www = user.root / "www"
    www.mkdir(exist_ok=True)
    (www / "where").write_text("on the lan\n")
    server = user.lan("sh", "-c", f"busybox httpd -f -p 9999 -h {www} >/dev/null 2>&1 & echo $!")
    try:
        out = user.docker("run", "--rm", "busybox", "wget", "-q", "-O-", f"http://{LAN_PEER}:9999/where").stdout
        assert out.strip() == "on the lan"
    finally:
        user.lan("kill", server.stdout.strip(), check=False)


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


def test_host_mode_is_the_users_host_namespace(user: RootlessUser) -> None:
    out = user.docker("run", "--rm", "--network", "host", "busybox", "ip", "-o", "-4", "addr").stdout
    assert f"{LAN_HOST}/24" in out  # the user's own address, not the rootless namespace's


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
