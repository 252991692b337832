"""Published ports of an IPv4-only container on IPv6, with the docker CLI, across a daemon restart.

Docker behaviour checked (userland proxy on, its default): `-p 18480:80`
answers on 0.0.0.0 and [::] (`docker port` lists both, `curl http://[::1]:18480`
reaches the container); `-p [::1]:…` answers on ::1 and `-p 127.0.0.1:…` on
127.0.0.1 only; a port a process of the host holds on [::] fails `docker run`
with exit 125 and Docker's "Bind for [::]:PORT failed" message, leaving
nothing listening; published ports keep answering while the daemon is down
(live restore) and stop when the container is removed.
"""

from __future__ import annotations

import socket
import subprocess

from coracle.netns import netns as enter
from harness import Daemon, unique


def curl(daemon: Daemon, url: str) -> subprocess.CompletedProcess[str]:
    return daemon.netns_exec("curl", "-sg", "--max-time", "5", url, check=False)


def test_ipv6_ports_of_an_ipv4_only_container(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    web, loop6, loop4, clash = (unique(n) for n in ("web", "l6", "l4", "cl"))
    serve = ["busybox", "httpd", "-f", "-p", "80", "-h", "/etc"]
    d.docker("run", "-d", "--name", web, "--hostname", "webhost", "-p", "18480:80", *serve)
    d.docker("run", "-d", "--name", loop6, "--hostname", "loop6", "-p", "[::1]:18481:80", *serve)
    d.docker("run", "-d", "--name", loop4, "--hostname", "loop4", "-p", "127.0.0.1:18482:80", *serve)
    assert d.docker("port", web).stdout.splitlines() == ["80/tcp -> 0.0.0.0:18480", "80/tcp -> [::]:18480"]
    assert d.docker("port", loop6).stdout.splitlines() == ["80/tcp -> [::1]:18481"]
    assert curl(d, "http://[::1]:18480/hostname").stdout == "webhost\n"
    assert curl(d, "http://127.0.0.1:18480/hostname").stdout == "webhost\n"
    assert curl(d, "http://[::1]:18481/hostname").stdout == "loop6\n"
    assert curl(d, "http://127.0.0.1:18481/hostname").returncode != 0
    assert curl(d, "http://127.0.0.1:18482/hostname").stdout == "loop4\n"
    assert curl(d, "http://[::1]:18482/hostname").returncode != 0

    with enter(f"/run/netns/{d.netns}"):
        holder = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::", 18483))
        holder.listen(1)
        res = d.docker("run", "-d", "--name", clash, "-p", "18483:80", *serve, check=False)
        assert res.returncode == 125 and "Bind for [::]:18483 failed: address already in use" in res.stderr
        assert curl(d, "http://127.0.0.1:18483/hostname").returncode != 0  # nothing left on IPv4 either
    assert curl(d, "http://[::1]:18483/hostname").returncode != 0

    d.stop()  # live restore: the ports answer while the daemon is down
    assert curl(d, "http://[::1]:18480/hostname").stdout == "webhost\n"
    d.start()
    assert curl(d, "http://[::1]:18480/hostname").stdout == "webhost\n"
    d.docker("rm", "-f", web, loop6, loop4)
    assert curl(d, "http://[::1]:18480/hostname").returncode != 0
