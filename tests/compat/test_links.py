"""Legacy links (`--link`), as old compose files and scripts still use them.

Docker behaviour checked: the target's address under the alias in
/etc/hosts; ALIAS_PORT*, ALIAS_NAME and ALIAS_ENV_* variables; the link
stored as "/target:/linker/alias"; `rm --link` drops it; a stopped target
makes the start fail; host networking refuses links.
"""

from __future__ import annotations

from compat_helpers import Docker
from harness import Daemon, unique


def test_link_hosts_env_inspect_and_rm_link(docker: Docker) -> None:
    db, web = unique("db"), unique("web")
    docker("run", "-d", "--name", db, "-e", "SECRET_X=1", "--expose", "5432", "busybox", "sleep", "600")
    address = docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", db).stdout.strip()
    out = docker("run", "--name", web, "--link", f"{db}:database", "busybox", "sh", "-c",
                 "env; cat /etc/hosts; ping -c1 -W2 database >/dev/null && echo PING-OK").stdout
    assert f"DATABASE_PORT=tcp://{address}:5432" in out
    assert f"DATABASE_PORT_5432_TCP_ADDR={address}" in out and "DATABASE_PORT_5432_TCP_PROTO=tcp" in out
    assert f"DATABASE_NAME=/{web}/database" in out and "DATABASE_ENV_SECRET_X=1" in out
    assert any(line.startswith(address) and "database" in line.split() and db in line.split()
               for line in out.splitlines())
    assert "PING-OK" in out
    links = docker("inspect", "--format", "{{json .HostConfig.Links}}", web).stdout.strip()
    assert links == f'["/{db}:/{web}/database"]'
    docker("rm", "--link", f"/{web}/database")
    assert docker("inspect", "--format", "{{json .HostConfig.Links}}", web).stdout.strip() == "null"

    docker("stop", "-t", "0", db)
    again = unique("web")
    docker("create", "--name", again, "--link", db, "busybox", "true")
    failed = docker("start", again, check=False)
    assert failed.returncode != 0 and "Cannot link to a non running container" in failed.stderr
    host = docker("run", "--rm", "--network", "host", "--link", db, "busybox", "true", check=False)
    assert host.returncode != 0 and "host type networking can't be used with links" in host.stderr
    missing = docker("run", "--rm", "--link", "no-such-ctr", "busybox", "true", check=False)
    assert missing.returncode != 0 and "could not get container for no-such-ctr" in missing.stderr


def test_native_cli_link_and_rm_link(daemon: Daemon, docker: Docker) -> None:
    db, web = unique("db"), unique("web")
    docker("run", "-d", "--name", db, "busybox", "sleep", "600")
    out = daemon.cli("run", "--name", web, "--link", f"{db}:store", "busybox", "sh", "-c",
                     "echo $STORE_NAME; grep -c store /etc/hosts").stdout.split()
    assert out == [f"/{web}/store", "1"]
    daemon.cli("rm", "--link", f"/{web}/store")
    assert docker("inspect", "--format", "{{json .HostConfig.Links}}", web).stdout.strip() == "null"
