"""Volumes with the docker CLI, the SDK and docker-compose, checked against Docker's behaviour.

Every test removes the volumes it made (the `volumes_made` fixture), after the
compat `clean` fixture has removed its containers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from collections.abc import Iterator

import docker as docker_sdk
import pytest

from compat_helpers import Docker, env_for
from harness import Daemon, unique

COMPOSE = shutil.which("docker-compose") or ""


@pytest.fixture(autouse=True)
def volumes_made(daemon: Daemon) -> Iterator[None]:
    _, before = daemon.api("GET", "/volumes")
    names = {v["Name"] for v in before["Volumes"]}
    yield
    _, containers = daemon.api("GET", "/containers/json?all=1")
    for c in containers:
        daemon.api("DELETE", f"/containers/{c['Id']}?force=1")
    _, after = daemon.api("GET", "/volumes")
    for v in after["Volumes"]:
        if v["Name"] not in names:
            daemon.api("DELETE", f"/volumes/{v['Name']}")


def test_create_ls_inspect_rm_with_the_cli(docker: Docker) -> None:
    """Docker: create returns the name, inspect shows the local driver's mountpoint and labels,
    creating an existing name again returns it, ls filters by label, rm removes it."""
    name = unique("vol")
    assert docker("volume", "create", "--label", "tier=db", name).stdout.strip() == name
    assert docker("volume", "create", name).stdout.strip() == name
    info = json.loads(docker("volume", "inspect", name).stdout)[0]
    assert info["Driver"] == "local" and info["Scope"] == "local" and info["Labels"] == {"tier": "db"}
    assert info["Mountpoint"].endswith(f"/volumes/{name}/_data")
    listed = docker("volume", "ls", "-q", "--filter", "label=tier=db").stdout.split()
    assert name in listed
    assert name not in docker("volume", "ls", "-q", "--filter", "label=tier=web").stdout.split()
    assert docker("volume", "rm", name).stdout.strip() == name
    missing = docker("volume", "inspect", name, check=False)
    assert missing.returncode == 1 and "no such volume" in missing.stderr


def test_bad_driver_and_name_are_refused(docker: Docker) -> None:
    res = docker("volume", "create", "-d", "nfs-magic", unique("vol"), check=False)
    assert res.returncode == 1 and 'plugin "nfs-magic" not found' in res.stderr
    res = docker("volume", "create", "bad/name", check=False)
    assert res.returncode == 1 and "includes invalid characters for a local volume name" in res.stderr
    res = docker("volume", "create", "-o", "color=red", unique("vol"), check=False)
    assert res.returncode == 1 and 'invalid option key: "color"' in res.stderr


def test_data_persists_across_containers_and_in_use_is_refused(docker: Docker) -> None:
    """Docker: a named volume outlives its container; rm (even -f) is refused while a container uses it."""
    name = unique("vol")
    docker("run", "--name", name + "-w", "-v", f"{name}:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert name in docker("volume", "ls", "-q").stdout.split()
    assert docker("ps", "-a", "--format", "{{.Names}}", "--filter", f"volume={name}").stdout == name + "-w\n"
    refused = docker("volume", "rm", "-f", name, check=False)
    assert refused.returncode == 1 and "volume is in use" in refused.stderr
    assert docker("volume", "ls", "-q", "--filter", "dangling=true").stdout.split().count(name) == 0
    docker("rm", name + "-w")
    assert name in docker("volume", "ls", "-q", "--filter", "dangling=true").stdout.split()
    out = docker("run", "--rm", "--mount", f"type=volume,source={name},target=/again", "busybox",
                 "cat", "/again/f").stdout
    assert out.strip() == "kept"
    docker("volume", "rm", name)


def test_anonymous_volumes_rm_v_and_prune(docker: Docker, daemon: Daemon) -> None:
    """Docker: `-v /dst` makes an anonymous volume that `rm -v` removes; `volume prune` takes only
    anonymous volumes unless `--all` (API 1.42+)."""
    ctr = unique("anon")
    docker("create", "--name", ctr, "-v", "/scratch", "busybox", "true")
    mounts = json.loads(docker("inspect", ctr).stdout)[0]["Mounts"]
    anon = [m for m in mounts if m["Destination"] == "/scratch"][0]
    assert anon["Type"] == "volume" and anon["Driver"] == "local" and len(anon["Name"]) == 64
    assert "com.docker.volume.anonymous" in json.loads(docker("volume", "inspect", anon["Name"]).stdout)[0]["Labels"]
    docker("rm", "-v", ctr)
    assert anon["Name"] not in docker("volume", "ls", "-q").stdout.split()

    named, other = unique("keep"), unique("pr")
    docker("volume", "create", "--label", f"owner={named}", named)
    docker("create", "--name", other, "-v", "/x", "busybox", "true")
    anon2 = json.loads(docker("inspect", other).stdout)[0]["Mounts"][0]["Name"]
    docker("rm", other)
    out = docker("volume", "prune", "-f").stdout
    assert anon2 in out and named not in out
    out = docker("volume", "prune", "-f", "--all", "--filter", f"label=owner={named}").stdout
    assert named in out
    assert named not in docker("volume", "ls", "-q").stdout.split()


def test_events_for_volume_lifecycle(docker: Docker, daemon: Daemon) -> None:
    """Docker: volume create, mount, unmount, destroy events with the driver and container attributes."""
    name = unique("ev")
    since = f"{time.time():.6f}"
    docker("volume", "create", name)
    docker("run", "--rm", "-v", f"{name}:/d", "busybox", "true")
    docker("volume", "rm", name)
    until = f"{time.time():.6f}"
    out = docker("events", "--since", since, "--until", until, "--filter", f"volume={name}",
                 "--format", "{{json .}}").stdout
    events = [json.loads(line) for line in out.splitlines() if name in line]
    actions = [e["Action"] for e in events]
    assert actions == ["create", "mount", "unmount", "destroy"]
    mount = events[1]["Actor"]["Attributes"]
    assert mount["destination"] == "/d" and mount["driver"] == "local" and mount["read/write"] == "true"


def test_sdk_volumes(client: docker_sdk.DockerClient) -> None:
    name = unique("sdk")
    vol = client.volumes.create(name, labels={"app": "x"})
    assert client.volumes.get(name).attrs["Labels"] == {"app": "x"}
    assert name in [v.name for v in client.volumes.list(filters={"label": "app=x"})]
    out = client.containers.run("busybox", ["sh", "-c", "echo sdk > /v/f; cat /v/f"], remove=True,
                                volumes={name: {"bind": "/v", "mode": "rw"}})
    assert out == b"sdk\n"
    ro = client.containers.run("busybox", ["sh", "-c", "cat /v/f; touch /v/g 2>/dev/null || echo read-only"],
                               remove=True, volumes={name: {"bind": "/v", "mode": "ro"}})
    assert ro == b"sdk\nread-only\n"
    pruned = client.volumes.prune(filters={"all": "true", "label": "app=x"})
    assert pruned["VolumesDeleted"] == [name] and pruned["SpaceReclaimed"] == 4
    with pytest.raises(docker_sdk.errors.NotFound):
        vol.reload()


COMPOSE_FILE = """\
version: "3.7"
services:
  writer:
    image: busybox
    command: ["sh", "-c", "echo from-writer > /shared/msg; exec sleep 300"]
    volumes: ["data:/shared"]
  reader:
    image: busybox
    command: ["sh", "-c", "exec sleep 300"]
    volumes: ["data:/shared:ro"]
volumes:
  data: {}
"""


@pytest.mark.skipif(not COMPOSE, reason="needs docker-compose")
def test_compose_named_volume_shared_and_down_v(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    """docker-compose: a top-level named volume (`<project>_data`) used by two services; `down -v` removes it."""
    project = unique("cv")
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE)

    def compose(*args: str) -> str:
        res = subprocess.run([COMPOSE, "-p", project, "--no-ansi", *args], cwd=tmp_path, capture_output=True,
                             text=True, env=env_for(daemon), timeout=60)
        assert res.returncode == 0, f"docker-compose {args}: {res.stdout}\n{res.stderr}"
        return res.stdout

    try:
        compose("up", "-d")
        assert f"{project}_data" in docker("volume", "ls", "-q").stdout.split()
        got = ""
        for _ in range(50):
            got = subprocess.run([COMPOSE, "-p", project, "exec", "-T", "reader", "cat", "/shared/msg"],
                                 cwd=tmp_path, capture_output=True, text=True, env=env_for(daemon)).stdout
            if got:
                break
            docker("run", "--rm", "busybox", "sleep", "0.1")
        assert got.strip() == "from-writer"
        compose("down", "-v")
        assert f"{project}_data" not in docker("volume", "ls", "-q").stdout.split()
    finally:
        subprocess.run([COMPOSE, "-p", project, "down", "-v"], cwd=tmp_path, capture_output=True,
                       env=env_for(daemon), timeout=60)


def test_tmpfs_volume_is_one_filesystem_shared_by_running_containers(docker: Docker, tmp_path: Path) -> None:
    """Docker's local driver with type=tmpfs: every container using the volume sees the same tmpfs,
    which exists while a container uses it (its files are gone once the last one stops)."""
    name = unique("tv")
    docker("volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=1m,mode=1777", name)
    first = unique("t1")
    docker("run", "-d", "--name", first, "-v", f"{name}:/v", "busybox", "sh", "-c",
           "echo shared > /v/f; exec sleep 300")
    docker("exec", first, "sh", "-c", "until test -f /v/f; do sleep 0.1; done")
    out = docker("run", "--rm", "-v", f"{name}:/w", "busybox", "sh", "-c", "cat /w/f; grep ' /w ' /proc/mounts").stdout
    assert out.startswith("shared\n") and "tmpfs" in out and "size=1024k" in out
    mountpoint = json.loads(docker("volume", "inspect", name).stdout)[0]["Mountpoint"]
    docker("rm", "-f", first)
    out = docker("run", "--rm", "-v", f"{name}:/w", "busybox",
                 "sh", "-c", "ls /w; grep -c ' /w tmpfs' /proc/mounts").stdout
    assert out.split() == ["1"]  # a fresh, empty tmpfs
    assert not Path(mountpoint).is_mount() and not list(Path(mountpoint).iterdir())


def test_bind_volume_mounts_its_device(docker: Docker, tmp_path: Path) -> None:
    """Docker's local driver with type=none,o=bind: the volume is the host directory `device`."""
    (tmp_path / "hostfile").write_text("from-host\n")
    name = unique("bv")
    docker("volume", "create", "-o", "type=none", "-o", "o=bind", "-o", f"device={tmp_path}", name)
    out = docker("run", "--rm", "-v", f"{name}:/b", "busybox", "sh", "-c", "cat /b/hostfile; echo back > /b/new")
    assert out.stdout == "from-host\n"
    assert (tmp_path / "new").read_text() == "back\n"
    docker("volume", "rm", name)
    assert (tmp_path / "hostfile").exists()  # removing the volume never touches its device


def test_native_cli_volume_verbs_mount_and_volumes_from(daemon: Daemon) -> None:
    """`coracle volume create|ls|inspect|rm|prune` with docker's output, `--mount` and `--volumes-from`."""
    name = unique("nv")
    assert daemon.cli("volume", "create", "--label", "k=v", name).stdout == name + "\n"
    table = daemon.cli("volume", "ls", "--filter", f"name={name}").stdout.splitlines()
    assert table[0].split() == ["DRIVER", "VOLUME", "NAME"] and table[1].split() == ["local", name]
    assert daemon.cli("volume", "ls", "--format", "{{.Name}} {{.Label \"k\"}}", "-f", "label=k").stdout \
        == f"{name} v\n"
    assert daemon.cli("volume", "inspect", "-f", "{{.Driver}}", name).stdout == "local\n"
    donor = unique("don")
    daemon.cli("run", "--name", donor, "--mount", f"type=volume,source={name},target=/data", "busybox",
               "sh", "-c", "echo via-mount > /data/f")
    out = daemon.cli("run", "--rm", "--volumes-from", f"{donor}:ro", "busybox", "sh", "-c",
                     "cat /data/f; touch /data/g 2>/dev/null || echo read-only").stdout
    assert out == "via-mount\nread-only\n"
    mounts = json.loads(daemon.cli("inspect", donor).stdout)[0]["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"], m["Driver"], m["RW"]) for m in mounts] \
        == [("volume", name, "/data", "local", True)]
    refused = daemon.cli("volume", "rm", name, check=False)
    assert refused.returncode == 1 and f"remove {name}: volume is in use" in refused.stderr
    daemon.cli("rm", donor)
    assert daemon.cli("volume", "rm", name).stdout == name + "\n"
    missing = daemon.cli("volume", "inspect", name, check=False)
    assert missing.returncode == 1 and f"No such volume: {name}" in missing.stderr
    daemon.cli("volume", "create", "--label", f"owner={name}", name)
    out = daemon.cli("volume", "prune", "-f", "--all", "--filter", f"label=owner={name}",
                     "--filter", "label!=keep").stdout
    assert "Deleted Volumes:\n" in out and f"\n{name}\n" in out and "Total reclaimed space:" in out
    bad = daemon.cli("run", "--rm", "--mount", "type=volume,target", "busybox", "true", check=False)
    assert bad.returncode != 0 and "--mount" in bad.stderr


def test_copy_up_of_image_content_into_new_volume(docker: Docker, tmp_path: Path) -> None:
    """Docker: a new, empty volume first mounted over an image directory gets that directory's content
    (also an image's VOLUME, as an anonymous volume), unless `nocopy`; a volume with content is kept."""
    base, image = unique("seed"), unique("seedimg")
    docker("run", "--name", base, "busybox", "sh", "-c",
           "mkdir -p /seed/sub && echo hello > /seed/sub/f && ln -s sub/f /seed/link && chmod 0750 /seed")
    docker("commit", "--change", "VOLUME /seed", base, image)
    try:
        vol = unique("cu")
        out = docker("run", "--rm", "-v", f"{vol}:/seed", image, "sh", "-c",
                     "cat /seed/link; stat -c %a /seed; echo changed > /seed/sub/f").stdout
        assert out == "hello\n750\n"
        assert docker("run", "--rm", "-v", f"{vol}:/seed", image, "cat", "/seed/sub/f").stdout == "changed\n"
        out = docker("run", "--rm", "-v", f"{unique('nc')}:/seed:nocopy", image, "ls", "-A", "/seed").stdout
        assert out == ""
        out = docker("run", "--rm", "--mount", f"type=volume,source={unique('nc')},target=/seed,volume-nocopy",
                     image, "ls", "-A", "/seed").stdout
        assert out == ""
        anon = unique("an")
        assert docker("run", "--name", anon, image, "cat", "/seed/sub/f").stdout == "hello\n"
        mounts = json.loads(docker("inspect", anon).stdout)[0]["Mounts"]
        assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/seed")]
        docker("rm", "-v", anon)
    finally:
        docker("rmi", image, check=False)


def test_copy_up_never_follows_a_symlink_out_of_the_container(docker: Docker, tmp_path: Path) -> None:
    """Attack: the image's directory is a symlink to a host path; copy-up resolves it inside the
    container's root, so the host directory's files never reach the volume."""
    (tmp_path / "host-secret").write_text("secret\n")
    base, image = unique("evil"), unique("evilimg")
    docker("run", "--name", base, "busybox", "ln", "-s", str(tmp_path), "/seed")
    docker("commit", base, image)
    try:
        out = docker("run", "--rm", "-v", f"{unique('ev')}:/data", "-v", f"{unique('ev')}:/seed", image,
                     "ls", "-A", "/seed").stdout
        assert "host-secret" not in out
    finally:
        docker("rmi", image, check=False)


def test_system_df_counts_volumes_and_their_size(docker: Docker, daemon: Daemon) -> None:
    """Docker: `system df` has a Local Volumes line; `-v` lists each volume with its links and size."""
    name = unique("df")
    docker("run", "--name", name, "-v", f"{name}:/d", "busybox", "sh", "-c", "head -c 3000 /dev/zero > /d/z")
    verbose = docker("system", "df", "-v").stdout
    line = [row for row in verbose.splitlines() if row.startswith(name)]
    assert line and line[0].split()[1:] == ["1", "3kB"]
    summary = docker("system", "df", "--format", "{{.Type}} {{.TotalCount}}").stdout
    _, listed = daemon.api("GET", "/volumes")
    assert f"Local Volumes {len(listed['Volumes'])}" in summary
    native = daemon.cli("system", "df", "-v").stdout
    assert [row.split()[1:] for row in native.splitlines() if row.startswith(name)] == [["1", "3kB"]]


def _host_mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def test_tmpfs_volume_is_not_left_mounted_across_a_daemon_crash(fresh_daemon: Daemon) -> None:
    """The host mount of a tmpfs volume lives only while a container uses it: a container that
    exits while the daemon is down, or a crash between an exit and the unmount, leave nothing
    mounted once the daemon is back."""
    d = fresh_daemon
    d.start()
    name = unique("cr")
    d.docker("volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", name)
    mountpoint = json.loads(d.docker("volume", "inspect", name).stdout)[0]["Mountpoint"]
    d.docker("run", "-d", "--name", name, "-v", f"{name}:/v", "busybox", "sleep", "300")
    pid = json.loads(d.docker("inspect", name).stdout)[0]["State"]["Pid"]
    assert _host_mounted(mountpoint)
    d.stop(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    d.start()
    assert json.loads(d.docker("inspect", name).stdout)[0]["State"]["Running"] is False
    assert not _host_mounted(mountpoint)

    d.stop(signal.SIGKILL)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mountpoint], check=True)  # the crash window
    d.start()
    assert not _host_mounted(mountpoint)
    d.docker("rm", name)
    d.docker("volume", "rm", name)
