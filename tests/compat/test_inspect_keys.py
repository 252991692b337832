"""Keys of inspect and info that clients read, as Docker 28 returns them (API 1.47, and 1.44 where it differs)."""

from __future__ import annotations

import json
import os

import docker

from compat_helpers import Docker, inspect
from harness import Daemon, unique

# moby's oci.DefaultSpec: what Docker shows when the request left the masking unset.
MASKED = ["/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
          "/sys/devices/virtual/powercap"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def test_host_config_runtime_and_path_masking(docker: Docker) -> None:
    """Docker: HostConfig.Runtime "runc"; the default masked and read-only paths listed, null when privileged."""
    plain = docker("create", "busybox", "true").stdout.strip()
    privileged = docker("create", "--privileged", "busybox", "true").stdout.strip()
    hc = inspect(docker, plain)["HostConfig"]
    assert hc["Runtime"] == "runc"
    assert hc["MaskedPaths"] == MASKED and hc["ReadonlyPaths"] == READONLY
    phc = inspect(docker, privileged)["HostConfig"]
    assert phc["MaskedPaths"] is None and phc["ReadonlyPaths"] is None
    assert docker("inspect", "-f", "{{.HostConfig.Runtime}}", plain).stdout.strip() == "runc"


def test_graph_driver_directories(docker: Docker) -> None:
    """Docker (overlay2): GraphDriver.Data names the lower, upper, work and merged directories."""
    cid = docker("create", "busybox", "true").stdout.strip()
    data = inspect(docker, cid)["GraphDriver"]["Data"]
    assert set(data) == {"LowerDir", "UpperDir", "WorkDir", "MergedDir"}
    assert all(os.path.isdir(d) for d in data["LowerDir"].split(":"))
    assert os.path.isdir(data["UpperDir"])


def test_created_container_network_settings(docker: Docker) -> None:
    """Docker: before its first start a container lists the network it will join, with empty addresses."""
    on_bridge = docker("create", "busybox", "true").stdout.strip()
    on_host = docker("create", "--network", "host", "busybox", "true").stdout.strip()
    settings = inspect(docker, on_bridge)["NetworkSettings"]
    assert list(settings["Networks"]) == ["bridge"]
    assert settings["Networks"]["bridge"]["IPAddress"] == "" and settings["Networks"]["bridge"]["EndpointID"] == ""
    for key in ("HairpinMode", "LinkLocalIPv6Address", "SecondaryIPAddresses", "EndpointID", "GlobalIPv6Address",
                "IPv6Gateway", "SandboxKey", "Ports"):
        assert key in settings
    assert list(inspect(docker, on_host)["NetworkSettings"]["Networks"]) == ["host"]


def test_created_container_lists_its_user_network(docker: Docker) -> None:
    """Docker: right after `create --network NET` the container lists NET (empty addresses), in inspect and ps;
    `network disconnect` of the created container forgets it and `network connect` lists it again."""
    net = unique("net")
    docker("network", "create", net)
    cid = docker("create", "--network", net, "--network-alias", "db", "busybox", "true").stdout.strip()
    try:
        networks = inspect(docker, cid)["NetworkSettings"]["Networks"]
        assert list(networks) == [net]
        assert networks[net]["IPAddress"] == "" and networks[net]["EndpointID"] == ""
        assert networks[net]["Aliases"] == ["db"]
        listed = docker("ps", "-a", "--filter", f"id={cid}", "--format", "{{.Networks}}").stdout.strip()
        assert listed == net
        docker("network", "disconnect", net, cid)
        assert inspect(docker, cid)["NetworkSettings"]["Networks"] == {}
        docker("network", "connect", "--alias", "web", net, cid)
        assert inspect(docker, cid)["NetworkSettings"]["Networks"][net]["Aliases"] == ["web"]
        docker("start", "-a", cid)
        assert inspect(docker, cid)["NetworkSettings"]["Networks"][net]["NetworkID"]  # it was joined
    finally:
        docker("rm", "-f", cid)
        docker("network", "rm", net)


def test_aliases_carry_the_short_id_for_old_clients(docker: Docker, daemon: Daemon) -> None:
    """Docker: clients of API < 1.45 see the short id (and hostname) among the aliases on a user network."""
    net = unique("net")
    docker("network", "create", net)
    cid = docker("run", "-d", "--network", net, "--network-alias", "db", "busybox", "sleep", "30").stdout.strip()
    try:
        current = inspect(docker, cid)["NetworkSettings"]["Networks"][net]
        assert current["Aliases"] == ["db"] and cid[:12] in current["DNSNames"]
        old = docker_sdk(daemon, "1.44")
        try:
            aliases = old.api.inspect_container(cid)["NetworkSettings"]["Networks"][net]["Aliases"]
        finally:
            old.close()
        assert aliases[0] == "db" and cid[:12] in aliases
    finally:
        docker("rm", "-f", cid)
        docker("network", "rm", net)


def test_info_registry_bridge_and_proxies(daemon: Daemon) -> None:
    """Docker: info reports its registry settings, br_netfilter's switches and the daemon's proxies."""
    client = docker_sdk(daemon, "auto")
    try:
        info = client.info()
    finally:
        client.close()
    assert info["RegistryConfig"]["IndexConfigs"]["docker.io"]["Official"] is True
    assert "127.0.0.0/8" in info["RegistryConfig"]["InsecureRegistryCIDRs"]
    assert isinstance(info["BridgeNfIptables"], bool) and isinstance(info["BridgeNfIp6tables"], bool)
    assert info["HttpProxy"] == "" and info["HttpsProxy"] == "" and info["NoProxy"] == ""
    shown = json.loads(daemon.docker("info", "--format", "{{json .RegistryConfig}}").stdout)
    assert shown["IndexConfigs"]["docker.io"]["Secure"] is True


def docker_sdk(daemon: Daemon, version: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=daemon.host, version=version, timeout=30)
