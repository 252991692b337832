"""Routes of containers on `--internal` networks, with the docker CLI.

Docker behaviour checked (moby's bridge driver sets no gateway on an internal
network's endpoint, and the sandbox never takes an internal network for its
default route): a container only on an internal network has the route to that
network's subnet and no default route, and its endpoint shows no Gateway;
connecting it to an ordinary network gives it that network's default route;
connecting an internal network to a container keeps the default route it has;
disconnecting the ordinary network leaves the internal subnet's route alone.
"""

from __future__ import annotations

import json

from compat_helpers import Docker
from harness import unique


def routes(docker: Docker, name: str) -> list[str]:
    return [" ".join(line.split()) for line in docker("exec", name, "ip", "route").stdout.splitlines()]


def subnet(docker: Docker, network: str) -> str:
    return json.loads(docker("network", "inspect", network).stdout)[0]["IPAM"]["Config"][0]["Subnet"]


def test_internal_networks_give_no_default_route_and_take_none_away(docker: Docker) -> None:
    vault, lan, only, both = unique("vault"), unique("lan"), unique("only"), unique("both")
    docker("network", "create", "--internal", vault)
    docker("network", "create", lan)
    vault_net, lan_net = subnet(docker, vault), subnet(docker, lan)
    lan_gateway = json.loads(docker("network", "inspect", lan).stdout)[0]["IPAM"]["Config"][0]["Gateway"]

    docker("run", "-d", "--name", only, "--network", vault, "busybox", "sleep", "600")
    [route] = routes(docker, only)
    assert route.startswith(f"{vault_net} dev eth0 scope link")  # the subnet's route, and nothing else
    settings = json.loads(docker("inspect", only).stdout)[0]["NetworkSettings"]["Networks"][vault]
    assert settings["Gateway"] == "" and settings["IPAddress"]

    docker("network", "connect", lan, only)  # an ordinary network brings the way out
    assert f"default via {lan_gateway} dev eth1" in routes(docker, only)
    docker("network", "disconnect", lan, only)
    [route] = routes(docker, only)
    assert route.startswith(f"{vault_net} dev eth0 scope link")

    docker("run", "-d", "--name", both, "--network", lan, "busybox", "sleep", "600")
    docker("network", "connect", vault, both)  # the internal network takes nothing away
    table = routes(docker, both)
    assert f"default via {lan_gateway} dev eth0" in table
    assert any(r.startswith(f"{vault_net} dev eth1 scope link") for r in table)
    assert any(r.startswith(f"{lan_net} dev eth0 scope link") for r in table)
