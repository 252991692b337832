"""Features that are off answer as Docker answers with them off (swarm inactive, no plugins, no BuildKit)."""

from __future__ import annotations

import docker
import pytest
from docker.errors import APIError

from compat_helpers import Docker
from harness import Daemon

NOT_A_MANAGER = "This node is not a swarm manager."


def test_docker_cli_sees_swarm_inactive_and_no_plugins(docker: Docker) -> None:
    assert docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"
    for verb in (("node", "ls"), ("service", "ls"), ("secret", "ls"), ("config", "ls")):
        res = docker(*verb, check=False)
        assert res.returncode != 0 and NOT_A_MANAGER in res.stderr, (verb, res.stderr)
    init = docker("swarm", "init", check=False)
    assert init.returncode != 0 and "swarm mode is not supported by coracle" in init.stderr
    leave = docker("swarm", "leave", check=False)
    assert leave.returncode != 0 and "not part of a swarm" in leave.stderr
    plugins = docker("plugin", "ls", "--format", "{{.Name}}")
    assert plugins.stdout == ""
    missing = docker("plugin", "inspect", "vieux/sshfs", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_sdk_and_raw_api(client: docker.DockerClient, daemon: Daemon) -> None:
    assert client.info()["Swarm"]["LocalNodeState"] == "inactive"
    with pytest.raises(APIError) as err:
        client.services.list()
    assert err.value.status_code == 503 and NOT_A_MANAGER in str(err.value)
    assert client.plugins.list() == []
    for path in ("/session", "/grpc"):
        status, body = daemon.api("POST", path)
        assert status == 400 and "BuildKit" in body["message"]
