"""Everyday behaviours where a user compares coracle with Docker, checked with the docker CLI,
the SDK and the native `coracle` CLI.

Docker behaviour checked:
- `id` in a container lists the primary group among the supplementary ones, then the groups
  that name the user (only when no group is given with `-u`), then `--group-add`'s;
- `commit` keeps the container's config (Cmd, Entrypoint, Env, WorkingDir, Labels) unless
  `--change` overrides it, and an ENTRYPOINT change drops the kept Cmd;
- `rmi` of one of several references of an image only untags it; by ID it is refused (409)
  while several repositories reference it;
- the list's Command puts an argument holding a space in single quotes, and `ps` prints it
  with Go's quoting, cut to 20 characters;
- `system df` counts and `system df -v` as docker's CLI computes them from GET /system/df.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import docker
import pytest

from compat_helpers import Docker, inspect
from harness import Daemon, unique


@pytest.mark.parametrize("client", ["docker", "coracle"])
def test_supplementary_groups_are_dockers(daemon: Daemon, client: str) -> None:
    run = daemon.docker if client == "docker" else daemon.cli
    cases = {
        ("-u", "1000:1000", "--group-add", "20", "--group-add", "30"): "uid=1000 gid=1000 groups=20,30,1000",
        (): "uid=0(root) gid=0(root) groups=0(root),10(wheel)",
        ("-u", "daemon"): "uid=1(daemon) gid=1(daemon) groups=1(daemon)",
        ("-u", "root:audio"): "uid=0(root) gid=29(audio) groups=29(audio)",  # explicit group: no memberships
        ("--group-add", "audio"): "uid=0(root) gid=0(root) groups=0(root),10(wheel),29(audio)",
    }
    for flags, expected in cases.items():
        assert run("run", "--rm", *flags, "busybox", "id").stdout.strip() == expected, flags


def test_supplementary_groups_of_an_exec(client: docker.DockerClient) -> None:
    ctr = client.containers.run("busybox", "sleep 60", detach=True, group_add=["29"])
    try:
        as_user, as_root = ctr.exec_run("id", user="1000:1000").output, ctr.exec_run("id -G").output
        assert isinstance(as_user, bytes) and isinstance(as_root, bytes)  # not streamed: the whole output
        assert as_user.strip() == b"uid=1000 gid=1000 groups=29(audio),1000"
        assert as_root.split() == [b"0", b"10", b"29"]
    finally:
        ctr.remove(force=True)


def test_commit_keeps_the_containers_config(docker: Docker, daemon: Daemon, client: docker.DockerClient) -> None:
    name, repo = unique("cm"), unique("commit")
    docker("run", "--name", name, "-e", "FOO=bar", "-w", "/tmp", "-l", "k=v", "--entrypoint", "sh", "busybox",
           "-c", "echo from-cmd; echo $FOO; pwd")
    docker("commit", name, f"{repo}:docker")
    config = inspect(docker, f"{repo}:docker")["Config"]
    assert (config["Entrypoint"], config["Cmd"]) == (["sh"], ["-c", "echo from-cmd; echo $FOO; pwd"])
    assert "FOO=bar" in config["Env"] and config["WorkingDir"] == "/tmp" and config["Labels"] == {"k": "v"}
    assert docker("run", "--rm", f"{repo}:docker").stdout == "from-cmd\nbar\n/tmp\n"

    daemon.cli("commit", "--change", 'CMD ["-c", "echo changed"]', name, f"{repo}:native")
    assert docker("run", "--rm", f"{repo}:native").stdout == "changed\n"
    daemon.cli("commit", "-c", 'ENTRYPOINT ["echo", "entry"]', name, f"{repo}:entry")
    config = inspect(docker, f"{repo}:entry")["Config"]
    assert config["Entrypoint"] == ["echo", "entry"] and not config["Cmd"]  # a new entrypoint drops the Cmd

    image = client.containers.get(name).commit(f"{repo}", "sdk", changes=["ENV FOO=sdk"])
    assert image.attrs["Config"]["Cmd"] == ["-c", "echo from-cmd; echo $FOO; pwd"]
    assert docker("run", "--rm", f"{repo}:sdk").stdout == "from-cmd\nsdk\n/tmp\n"


@pytest.mark.parametrize("client", ["docker", "coracle"])
def test_rmi_of_one_reference_only_untags(daemon: Daemon, client: str) -> None:
    run = daemon.docker if client == "docker" else daemon.cli
    repo = unique("rmi")
    image_id = inspect(daemon.docker, "busybox")["Id"]
    run("tag", "busybox", f"{repo}a:1")
    run("tag", "busybox", f"{repo}b:1")
    refused = run("rmi", image_id[7:19], check=False)
    assert refused.returncode == 1 and "image is referenced in multiple repositories" in refused.stderr
    assert run("rmi", f"{repo}a:1").stdout == f"Untagged: {repo}a:1\n"
    assert inspect(daemon.docker, f"{repo}b:1")["Id"] == image_id
    assert run("rmi", f"{repo}b:1").stdout == f"Untagged: {repo}b:1\n"
    assert inspect(daemon.docker, "busybox")["Id"] == image_id  # still tagged busybox: untagged, not deleted


def test_ps_command_is_quoted_as_docker_does(docker: Docker, daemon: Daemon) -> None:
    name = unique("q")
    docker("run", "-d", "--name", name, "busybox", "sh", "-c", 'sleep 60; echo "done"', "two words", "a\tb\x01", "é")
    listed = next(c for c in daemon.api("GET", "/containers/json")[1] if c["Names"] == [f"/{name}"])
    assert listed["Command"] == "sh -c 'sleep 60; echo \"done\"' 'two words' a\tb\x01 é"
    for run in (daemon.docker, daemon.cli):
        assert run("ps", "--filter", f"name={name}", "--format", "{{.Command}}").stdout == '"sh -c \'sleep 60; ec…"\n'
        full = run("ps", "--no-trunc", "--filter", f"name={name}", "--format", "{{.Command}}").stdout
        assert full == '"sh -c \'sleep 60; echo \\"done\\"\' \'two words\' a\\tb\\x01 é"\n'


def _without_times(text: str) -> str:
    """The text with ages and uptimes (which move between two commands) and column padding blanked."""
    text = re.sub(r"Up (About a minute|Less than a second|\d+ \w+)", "UP", text)
    text = re.sub(r"(About a minute|About an hour|Less than a second|\d+ \w+) ago", "AGO", text)
    return re.sub(r" {2,}", "  ", text)


def test_system_df_counts_and_verbose(fresh_daemon: Daemon, tmp_path: Path) -> None:
    d = fresh_daemon
    d.start()
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY blob /blob\n")
    (tmp_path / "blob").write_bytes(os.urandom(5000))
    sdk = d.sdk()
    try:
        sdk.images.build(path=str(tmp_path), tag="built:1")  # one build cache record of 5000 bytes
    finally:
        sdk.close()
    d.docker("run", "--name", "stopped", "busybox", "sh", "-c", "head -c 200000 /dev/zero > /blob")
    d.docker("run", "-d", "--name", "running", "-v", "used:/data", "busybox", "sh", "-c",
             "head -c 50000 /dev/zero > /data/x; exec sleep 600")
    d.docker("volume", "create", "unused")
    d.docker("run", "--rm", "-v", "unused:/d", "busybox", "sh", "-c", "head -c 30000 /dev/zero > /d/y")
    d.docker("commit", "stopped", "committed:1")
    d.docker("wait", "stopped")

    lines = d.docker("system", "df", "--format", "{{json .}}").stdout.splitlines()
    rows = {r["Type"]: r for r in map(json.loads, lines)}
    layers = d.api("GET", "/system/df")[1]["LayersSize"]
    # three images sharing the busybox layer; the one containers use has no unique bytes: all is reclaimable
    assert (rows["Images"]["TotalCount"], rows["Images"]["Active"]) == ("3", "1")
    assert rows["Images"]["Size"] == _size(layers) and rows["Images"]["Reclaimable"] == f"{_size(layers)} (100%)"
    # the stopped container's writable layer is reclaimable; the running one wrote only to its volume
    assert rows["Containers"] == {"Type": "Containers", "TotalCount": "2", "Active": "1", "Size": "200kB",
                                  "Reclaimable": "200kB (100%)"}
    assert rows["Local Volumes"] == {"Type": "Local Volumes", "TotalCount": "2", "Active": "1", "Size": "80kB",
                                     "Reclaimable": "30kB (37%)"}
    assert rows["Build Cache"] == {"Type": "Build Cache", "TotalCount": "1", "Active": "0", "Size": "5kB",
                                   "Reclaimable": "5kB"}  # docker shows no percentage for the build cache

    assert d.cli("system", "df").stdout == d.docker("system", "df").stdout
    assert d.cli("system", "df", "--format", "{{json .}}").stdout == d.docker("system", "df", "--format",
                                                                             "{{json .}}").stdout
    docker_verbose = d.docker("system", "df", "-v").stdout
    assert _without_times(d.cli("system", "df", "-v").stdout) == _without_times(docker_verbose)
    images = docker_verbose.split("Containers space usage:")[0]
    assert re.search(r"busybox +latest +\w{12} .* 1\.98MB +1\.983MB +0B +2\n", images), images
    assert "unused        0         30kB" in docker_verbose and "used          1         50kB" in docker_verbose
    fmt = "{{len .Images}} {{len .Containers}} {{len .Volumes}} {{range .BuildCache}}{{.Size}}{{end}}"
    assert d.cli("system", "df", "-v", "--format", fmt).stdout == d.docker("system", "df", "-v", "--format",
                                                                         fmt).stdout == "3 2 2 5kB"
    assert re.search(r"\nBuild cache usage: 5kB\n\nCACHE ID .*\n\w{12} +regular +5kB .* 1 +false\n$",
                     docker_verbose), docker_verbose

    # -v --format json: every field docker's CLI prints (a container's Platform, a volume's Group,
    # Availability and Status among them), with the same values
    def timeless(out: str) -> dict[str, Any]:
        """The document without the ages, which move between two commands."""
        doc = json.loads(out)
        for kind, rows in doc.items():
            for row in rows:
                for key in ("RunningFor", "CreatedSince", "LastUsedSince") + (("Status",) * (kind == "Containers")):
                    row.pop(key, None)
        return doc

    assert timeless(d.cli("system", "df", "-v", "--format", "json").stdout) == \
        timeless(d.docker("system", "df", "-v", "--format", "json").stdout)
    # GET /system/df shaped per API version as moby's router does, and `type` as from 1.42
    now = d.api("GET", "/system/df")[1]
    assert "VirtualSize" not in now["Images"][0] and "BuilderSize" not in now
    old = d.api("GET", "/v1.41/system/df")[1]
    assert old["Images"][0]["VirtualSize"] == old["Images"][0]["Size"] and old["BuilderSize"] >= 5000
    only = d.api("GET", "/system/df?type=volume&type=image")[1]
    assert (only["Containers"], only["BuildCache"], len(only["Volumes"]), len(only["Images"])) == (None, None, 2, 3)
    assert d.api("GET", "/system/df?type=bogus") == (400, {"message": "unknown object type: bogus"})


def _size(n: int) -> str:
    """docker's HumanSize (4 significant digits, decimal units) for the sizes this test makes."""
    return f"{n / 1e6:.4g}MB"
