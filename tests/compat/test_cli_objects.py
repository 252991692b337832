"""The docker CLI on networks, images, system df and events."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from compat_helpers import Docker, env_for, inspect
from harness import Daemon, start_registry, unique

REGISTRY = "/usr/bin/docker-registry"


def test_network_lifecycle(docker: Docker) -> None:
    net, ctr = unique("nw"), unique("nc")
    nid = docker("network", "create", "--subnet", "10.213.7.0/24", "--label", "team=compat", net).stdout.strip()
    rows = [json.loads(line) for line in docker("network", "ls", "--format", "{{json .}}").stdout.splitlines()]
    assert {"bridge", "host", "none", net} <= {r["Name"] for r in rows}
    assert docker("network", "ls", "-q", "--filter", "label=team=compat").stdout.split() == [nid[:12]]
    info = json.loads(docker("network", "inspect", net).stdout)[0]
    assert info["Id"] == nid and info["Driver"] == "bridge"
    assert info["IPAM"]["Config"][0]["Subnet"] == "10.213.7.0/24"
    docker("run", "-d", "--name", ctr, "--network", net, "busybox", "sleep", "60")
    networks = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", ctr).stdout)
    assert networks[net]["IPAddress"].startswith("10.213.7.")
    docker("network", "connect", "bridge", ctr)
    assert set(json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", ctr).stdout)) == {net, "bridge"}
    assert ctr in json.loads(docker("network", "inspect", "-f", "{{json .Containers}}", net).stdout).__repr__()
    interfaces = docker("exec", ctr, "ip", "-o", "-4", "addr").stdout
    assert "10.213.7." in interfaces and "172." in interfaces  # both wired live
    docker("network", "disconnect", "bridge", ctr)
    assert list(json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", ctr).stdout)) == [net]
    res = docker("network", "rm", net, check=False)
    assert res.returncode == 1 and "active endpoints" in res.stderr
    docker("rm", "-f", ctr)
    docker("network", "rm", net)
    res = docker("network", "inspect", net, check=False)
    assert res.returncode == 1 and "not found" in res.stderr.lower()


def test_network_prune_keeps_used_and_builtin(docker: Docker) -> None:
    unused, used, ctr = unique("np"), unique("nu"), unique("nc")
    docker("network", "create", unused)
    docker("network", "create", used)
    docker("run", "-d", "--name", ctr, "--network", used, "busybox", "sleep", "60")
    out = docker("network", "prune", "-f").stdout
    assert unused in out and used not in out
    names = docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert used in names and unused not in names and "bridge" in names


def test_images_tag_inspect_rmi(docker: Docker) -> None:
    repo = unique("img")
    docker("tag", "busybox", f"{repo}:v1")
    rows = [json.loads(line) for line in docker("images", "--format", "{{json .}}").stdout.splitlines()]
    assert any(r["Repository"] == repo and r["Tag"] == "v1" for r in rows)
    image = json.loads(docker("image", "inspect", f"{repo}:v1").stdout)[0]
    assert image["Id"] == inspect(docker, "busybox")["Id"]
    assert f"{repo}:v1" in image["RepoTags"] and image["Os"] == "linux"
    assert docker("image", "inspect", "-f", "{{.Config.Cmd}}", f"{repo}:v1").stdout.strip() == "[sh]"
    assert f"Untagged: {repo}:v1" in docker("rmi", f"{repo}:v1").stdout
    res = docker("rmi", f"{repo}:v1", check=False)
    assert res.returncode == 1 and "No such image" in res.stderr


def test_save_load_import(docker: Docker, tmp_path: Path) -> None:
    repo = unique("sl")
    docker("tag", "busybox", f"{repo}:saved")
    archive = tmp_path / "saved.tar"
    docker("save", "-o", str(archive), f"{repo}:saved")
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    docker("rmi", f"{repo}:saved")
    assert f"Loaded image: {repo}:saved" in docker("load", "-i", str(archive)).stdout
    assert docker("run", "--rm", f"{repo}:saved", "echo", "loaded-ok").stdout == "loaded-ok\n"
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    os.link("/bin/busybox", rootfs / "bin/busybox") if os.stat("/bin").st_dev == os.stat(tmp_path).st_dev \
        else subprocess.run(["cp", "/bin/busybox", str(rootfs / "bin/busybox")], check=True)
    (rootfs / "hello").write_text("imported\n")
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as tar:
        tar.add(rootfs, arcname=".")
    image_id = docker("import", "-c", "ENV PATH=/bin", "-c", 'CMD ["busybox", "cat", "/hello"]',
                      str(flat), f"{repo}:imported").stdout.strip()
    assert image_id.startswith("sha256:")
    assert docker("run", "--rm", f"{repo}:imported").stdout == "imported\n"


def test_system_df(docker: Docker) -> None:
    name = unique("df")
    docker("run", "--name", name, "busybox", "sh", "-c", "head -c 100000 /dev/zero > /blob")
    rows = {r["Type"]: r for r in map(json.loads, docker("system", "df", "--format", "{{json .}}").stdout.splitlines())}
    assert int(rows["Images"]["TotalCount"]) >= 1 and int(rows["Containers"]["TotalCount"]) >= 1
    verbose = docker("system", "df", "-v").stdout
    assert name in verbose and "busybox" in verbose


def test_events_since_and_filters(docker: Docker, daemon: Daemon) -> None:
    since = str(int(time.time()) - 1)
    net, ctr = unique("ev"), unique("ec")
    docker("network", "create", net)
    docker("run", "--name", ctr, "--network", net, "busybox", "true")
    docker("rm", ctr)
    docker("run", "-d", "--name", ctr + "x", "busybox", "sleep", "60")
    docker("network", "connect", net, ctr + "x")
    docker("network", "disconnect", net, ctr + "x")
    docker("rm", "-f", ctr + "x")
    docker("network", "rm", net)
    until = str(int(time.time()) + 1)
    out = docker("events", "--since", since, "--until", until, "--format", "{{json .}}").stdout
    events = [json.loads(line) for line in out.splitlines()]
    mine = [(e["Type"], e["Action"]) for e in events if e["Actor"]["Attributes"].get("name") in (net, ctr)]
    for wanted in [("network", "create"), ("container", "create"), ("container", "start"),
                   ("container", "die"), ("container", "destroy"), ("network", "destroy")]:
        assert wanted in mine, (wanted, mine)
    assert mine.index(("container", "create")) < mine.index(("container", "start")) < mine.index(("container", "die"))
    out = docker("events", "--since", since, "--until", until, "--filter", f"network={net}",
                 "--format", "{{.Action}}").stdout
    actions = out.split()
    assert actions[0] == "create" and actions[-1] == "destroy" and {"connect", "disconnect"} <= set(actions)
    out = docker("events", "--since", since, "--until", until, "--filter", "type=container",
                 "--filter", "event=die", "--filter", f"container={ctr}", "--format", "{{json .}}").stdout
    only = [json.loads(line) for line in out.splitlines()]
    assert [(e["Action"], e["Actor"]["Attributes"]["exitCode"]) for e in only] == [("die", "0")]
    live = subprocess.Popen(["docker", "events", "--filter", "type=network", "--format", "{{.Action}} {{.Actor.Attributes.name}}"],
                            stdout=subprocess.PIPE, text=True, env=env_for(daemon))
    try:
        time.sleep(0.5)  # let the stream subscribe (nothing before it is asserted)
        docker("network", "create", net)
        docker("network", "rm", net)
        assert live.stdout.readline().strip() == f"create {net}"
        assert live.stdout.readline().strip() == f"destroy {net}"
    finally:
        live.kill()
        live.wait()


@pytest.mark.skipif(not os.path.exists(REGISTRY), reason="needs Debian's docker-registry")
def test_push_and_pull_through_a_registry(docker: Docker, daemon: Daemon, tmp_path: Path) -> None:
    """A registry on the daemon's loopback (inside its namespace): push, rmi, pull, run."""
    registry, port = start_registry(daemon.netns, tmp_path)
    ref = f"127.0.0.1:{port}/compat/{unique('bb')}:1"
    try:
        docker("tag", "busybox", ref)
        docker("push", ref, timeout=60)
        docker("rmi", ref)
        out = docker("pull", ref, timeout=60).stdout
        assert "Status: Downloaded newer image" in out or "Image is up to date" in out or ref in out
        assert docker("run", "--rm", ref, "echo", "pulled").stdout == "pulled\n"
    finally:
        registry.kill()
        registry.wait()


def test_macvlan_network_with_the_docker_cli(docker: Docker, daemon: Daemon) -> None:
    """Docker's `network create -d macvlan -o parent=IFACE --subnet --gateway --ip-range --aux-address`:
    the container is a host of the parent's segment and reaches a neighbour there directly."""
    tag = unique("mv")[-6:]
    parent, neighbour, net, ctr = f"mv{tag}", unique("nb"), unique("mvn"), unique("mvc")
    subprocess.run(["ip", "netns", "add", neighbour], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", daemon.netns, "ip", "link", "add", parent, "type", "veth", "peer",
                        "name", "lan0", "netns", neighbour], check=True)
        for cmd in (["ip", "addr", "add", "192.0.2.2/24", "dev", "lan0"], ["ip", "link", "set", "lan0", "up"]):
            subprocess.run(["ip", "netns", "exec", neighbour, *cmd], check=True)
        docker("network", "create", "-d", "macvlan", "-o", f"parent={parent}", "--subnet", "192.0.2.0/24",
               "--gateway", "192.0.2.2", "--ip-range", "192.0.2.64/26", "--aux-address", "printer=192.0.2.64", net)
        info = json.loads(docker("network", "inspect", net).stdout)[0]
        assert info["Driver"] == "macvlan" and info["Options"] == {"parent": parent}
        assert info["IPAM"]["Config"] == [{"Subnet": "192.0.2.0/24", "Gateway": "192.0.2.2",
                                           "IPRange": "192.0.2.64/26",
                                           "AuxiliaryAddresses": {"printer": "192.0.2.64"}}]
        out = docker("run", "--name", ctr, "--network", net, "busybox", "sh", "-c",
                     "ip -o -4 addr show eth0; ping -c 1 -W 3 192.0.2.2").stdout
        assert "192.0.2.65/24" in out and "1 packets received" in out
        docker("rm", ctr)
        docker("network", "rm", net)
        res = subprocess.run(["ip", "netns", "exec", daemon.netns, "ip", "link", "show", parent], check=False,
                             capture_output=True)
        assert res.returncode == 0  # the parent is the host's, it stays
    finally:
        subprocess.run(["ip", "netns", "exec", daemon.netns, "ip", "link", "del", parent], check=False,
                       capture_output=True)
        subprocess.run(["ip", "netns", "del", neighbour], check=False)
