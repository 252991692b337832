"""run/create flags and registry verbs of the native CLI next to the docker CLI and the SDK.

Docker behaviour checked:
- `--oom-score-adj N` is the OOM score of the container's first process from its first
  instruction and of its execs; a value outside -1000..1000 is refused by the daemon with
  "Invalid value N, range for oom score adj is [-1000, 1000]" (run exits 125, create 1) and no
  container is left;
- `--cidfile F` writes the container ID (no newline); an existing F is refused before
  anything is created ("container ID file found, make sure the other container isn't running
  or delete F"; `run` exits 125, `create` 1, as for the daemon's refusals); a create that
  fails removes F;
- `-a STREAM` attaches only the streams named (stdin needs -i to be read); `-a` with `-d`
  fails with "conflicting options: cannot specify both --attach and --detach" (exit 1); a
  stream other than stdin/stdout/stderr is a flag error (exit 125); `create -a` records the
  choice in Config.Attach*; `start -a` attaches stdout and stderr;
- `--mount type=volume` with volume-driver/volume-opt/volume-label creates the missing volume
  with them (an existing volume is used as it is); an unknown driver is refused with
  "error looking up volume plugin X: plugin "X" not found"; volume options on a bind mount
  are refused (by the CLIs, and by the daemon: "field VolumeOptions must not be specified");
- `search` prints NAME/DESCRIPTION/STARS/OFFICIAL, honours --limit, --filter (unknown
  filters refused) and --format; without a term it exits 1;
- `manifest inspect [-v]` prints the registry's manifest with tab indentation, a manifest
  list rebuilt from its entries (three-space indentation) or, with -v, each entry's manifest;
  a missing one is "no such manifest: NAME:TAG" (exit 1).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from compat_helpers import env_for, inspect
from harness import PYTHON, Daemon, start_registry, unique

CLIENTS = ["docker", "coracle"]


def _client(daemon: Daemon, which: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    return daemon.docker if which == "docker" else daemon.cli


def _containers(daemon: Daemon) -> set[str]:
    return {c["Id"] for c in daemon.api("GET", "/containers/json?all=1")[1]}


def _volumes(daemon: Daemon) -> set[str]:
    return {v["Name"] for v in daemon.api("GET", "/volumes")[1]["Volumes"] or []}


@pytest.mark.parametrize("which", CLIENTS)
def test_oom_score_adj_from_the_first_instruction(daemon: Daemon, which: str) -> None:
    run = _client(daemon, which)
    # cat is the container's first process: the value it reads was written before it ran
    assert run("run", "--rm", "--oom-score-adj", "432", "busybox", "cat", "/proc/self/oom_score_adj").stdout == "432\n"
    name = unique("oom")
    run("run", "-d", "--name", name, "--oom-score-adj", "700", "busybox", "sleep", "60")
    assert run("exec", name, "cat", "/proc/self/oom_score_adj").stdout == "700\n"
    assert inspect(daemon.docker, name)["HostConfig"]["OomScoreAdj"] == 700
    before = _containers(daemon)
    for value in ("1001", "-1001"):
        for verb, status in (("run", 125), ("create", 1)):
            refused = run(verb, "--oom-score-adj", value, "busybox", "true", check=False)
            assert refused.returncode == status
            assert f"Invalid value {value}, range for oom score adj is [-1000, 1000]" in refused.stderr
    assert _containers(daemon) == before
    bad = run("run", "--rm", "--oom-score-adj", "x", "busybox", "true", check=False)
    assert bad.returncode == 125 and 'invalid argument "x" for "--oom-score-adj" flag' in bad.stderr


def test_oom_score_adj_through_the_sdk(daemon: Daemon, client: docker.DockerClient) -> None:
    out = client.containers.run("busybox", "cat /proc/self/oom_score_adj", oom_score_adj=250, remove=True)
    assert out == b"250\n"
    before = _containers(daemon)
    with pytest.raises(docker.errors.APIError, match=r"range for oom score adj is \[-1000, 1000\]") as caught:
        client.containers.create("busybox", "true", oom_score_adj=5000)
    assert caught.value.status_code == 400 and _containers(daemon) == before


@pytest.mark.parametrize("which", CLIENTS)
def test_cidfile(daemon: Daemon, which: str, tmp_path: Path) -> None:
    run = _client(daemon, which)
    cidfile = tmp_path / "cid"
    cid = run("run", "-d", "--cidfile", str(cidfile), "busybox", "sleep", "60").stdout.strip()
    assert cidfile.read_text() == cid
    before = _containers(daemon)
    for verb, status in (("run", 125), ("create", 1)):
        again = run(verb, "--cidfile", str(cidfile), "busybox", "true", check=False)
        assert again.returncode == status
        assert (f"container ID file found, make sure the other container isn't running or delete {cidfile}"
                in again.stderr)
    assert cidfile.read_text() == cid and _containers(daemon) == before
    failed = tmp_path / "failed"
    for verb, status in (("run", 125), ("create", 1)):
        res = run(verb, "--cidfile", str(failed), "--pull", "never", "no-such-image:zz", check=False)
        assert res.returncode == status and "No such image: no-such-image:zz" in res.stderr
        assert not failed.exists() and _containers(daemon) == before


@pytest.mark.parametrize("which", CLIENTS)
def test_attach_picks_streams(daemon: Daemon, which: str) -> None:
    run = _client(daemon, which)
    script = "echo to-out; echo to-err >&2"
    res = run("run", "--rm", "-a", "stderr", "busybox", "sh", "-c", script)
    assert (res.stdout, res.stderr) == ("", "to-err\n")
    res = run("run", "--rm", "-a", "STDOUT", "busybox", "sh", "-c", script)
    assert (res.stdout, res.stderr) == ("to-out\n", "")
    res = run("run", "--rm", "-i", "-a", "stdin", "-a", "stdout", "busybox", "cat", input="typed\n")
    assert res.stdout == "typed\n"
    both = run("run", "-d", "-a", "stdout", "busybox", "true", check=False)
    assert both.returncode == 1 and "conflicting options: cannot specify both --attach and --detach" in both.stderr
    bad = run("run", "-a", "stdall", "busybox", "true", check=False)
    assert bad.returncode == 125 and "valid streams are STDIN, STDOUT and STDERR" in bad.stderr

    cid = run("create", "-i", "-a", "stdin", "busybox", "cat").stdout.strip()
    config = inspect(daemon.docker, cid)["Config"]
    assert [config[k] for k in ("AttachStdin", "AttachStdout", "AttachStderr", "StdinOnce")] == [True, False,
                                                                                                 False, True]
    plain = run("create", "busybox", "sh", "-c", script).stdout.strip()
    assert [inspect(daemon.docker, plain)["Config"][k] for k in ("AttachStdout", "AttachStderr")] == [True, True]
    res = run("start", "-a", plain)
    assert (res.stdout, res.stderr) == ("to-out\n", "to-err\n")


@pytest.mark.parametrize("which", CLIENTS)
def test_mount_volume_options_create_the_volume(daemon: Daemon, which: str) -> None:
    run = _client(daemon, which)
    name = unique("mv")
    spec = (f"type=volume,src={name},dst=/d,volume-driver=local,volume-opt=type=tmpfs,volume-opt=device=tmpfs,"
            "volume-opt=o=size=2m,volume-label=team=blue")
    try:
        mounts = run("run", "--rm", "--mount", spec, "busybox", "grep", " /d ", "/proc/mounts").stdout
        assert mounts.startswith("tmpfs /d tmpfs ") and "size=2048k" in mounts
        volume = json.loads(daemon.docker("volume", "inspect", name).stdout)[0]
        assert volume["Labels"] == {"team": "blue"}
        assert volume["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=2m"}
        # the volume exists now: a later mount asking for other options uses it as it is
        run("run", "--rm", "--mount", f"type=volume,src={name},dst=/d,volume-opt=o=size=5m", "busybox", "true")
        assert json.loads(daemon.docker("volume", "inspect", name).stdout)[0]["Options"]["o"] == "size=2m"
    finally:
        daemon.docker("volume", "rm", name, check=False)
    containers, volumes = _containers(daemon), _volumes(daemon)
    missing = unique("mv")
    refused = run("run", "--rm", "--mount", f"type=volume,src={missing},dst=/d,volume-driver=nope", "busybox",
                  "true", check=False)
    assert refused.returncode == 125
    assert 'error looking up volume plugin nope: plugin "nope" not found' in refused.stderr
    bad = run("run", "--rm", "--mount", f"type=volume,src={missing},dst=/d,volume-opt=colour=red", "busybox", "true",
              check=False)
    assert bad.returncode == 125 and 'invalid option key: "colour"' in bad.stderr
    mixed = run("run", "--rm", "--mount", "type=bind,src=/tmp,dst=/d,volume-opt=type=tmpfs", "busybox", "true",
                check=False)
    assert mixed.returncode == 125 and "cannot mix 'volume-*' options with mount type 'bind'" in mixed.stderr
    assert (_containers(daemon), _volumes(daemon)) == (containers, volumes)


def test_mount_volume_options_through_the_sdk(daemon: Daemon, client: docker.DockerClient) -> None:
    name = unique("mv")
    mount = docker.types.Mount("/d", name, type="volume", labels={"made": "sdk"},
                               driver_config=docker.types.DriverConfig("local", {"type": "tmpfs", "device": "tmpfs"}))
    try:
        out = client.containers.run("busybox", "grep ' /d ' /proc/mounts", mounts=[mount], remove=True)
        assert out.startswith(b"tmpfs /d tmpfs ")
        assert client.volumes.get(name).attrs["Labels"] == {"made": "sdk"}
    finally:
        daemon.docker("volume", "rm", name, check=False)
    before = _containers(daemon)
    bind = docker.types.Mount("/d", "/tmp", type="bind")
    bind["VolumeOptions"] = {"NoCopy": True}
    with pytest.raises(docker.errors.APIError, match="field VolumeOptions must not be specified"):
        client.containers.create("busybox", "true", mounts=[bind])
    assert _containers(daemon) == before


needs_registry = pytest.mark.skipif(not os.path.exists("/usr/bin/docker-registry"), reason="needs docker-registry")


@needs_registry
def test_search_and_manifest_inspect_match_docker(daemon: Daemon, tmp_path: Path) -> None:
    registry, port = start_registry(daemon.netns, tmp_path)
    repo = f"127.0.0.1:{port}/parity/{unique('bb')}"
    try:
        daemon.docker("tag", "busybox", f"{repo}:1")
        daemon.docker("push", f"{repo}:1", timeout=60)
        daemon.docker("tag", "busybox", f"{repo}-other:1")
        daemon.docker("push", f"{repo}-other:1", timeout=60)
        for args in (["search", f"127.0.0.1:{port}/parity"], ["search", "--limit", "1", f"127.0.0.1:{port}/parity"],
                     ["search", "--format", "{{json .}}", repo], ["search", "--filter", "is-official=true", repo],
                     ["search", "--filter", "bogus=1", repo], ["search", "busybox"], ["search"]):
            ours, theirs = daemon.cli(*args, check=False), daemon.docker(*args, check=False)
            assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), args
        rows = daemon.cli("search", f"127.0.0.1:{port}/parity").stdout.splitlines()
        assert rows[0].split() == ["NAME", "DESCRIPTION", "STARS", "OFFICIAL"]
        assert [r.split()[0] for r in rows[1:]] == [repo, f"{repo}-other"]
        assert "invalid filter 'bogus'" in daemon.cli("search", "--filter", "bogus=1", repo, check=False).stderr

        def in_netns(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
            """manifest inspect talks to the registry itself, which listens in the daemon's namespace"""
            return subprocess.run(["nsenter", f"--net=/run/netns/{daemon.netns}", *args], capture_output=True,
                                  text=True, env={**env_for(daemon), "CORACLE_HOST": daemon.host}, timeout=60,
                                  input=input)

        native = [PYTHON, "-m", "coracle.cli.main", "manifest", "inspect", "--insecure"]
        for extra in ([], ["-v"]):
            ours = in_netns(*native, *extra, f"{repo}:1")
            theirs = in_netns("docker", "manifest", "inspect", "--insecure", *extra, f"{repo}:1")
            assert ours.returncode == theirs.returncode == 0 and ours.stdout == theirs.stdout, ours.stderr
        manifest = json.loads(ours.stdout)
        assert manifest["Ref"] == f"{repo}:1" and manifest["Descriptor"]["platform"] == {"architecture": "amd64",
                                                                                         "os": "linux"}
        assert ours.stdout.startswith('{\n\t"Ref"')
        # a manifest list naming that manifest: docker rebuilds it (three-space indent) or, with -v, shows each entry
        entry = {k: manifest["Descriptor"][k] for k in ("mediaType", "size", "digest")}
        list_type = "application/vnd.docker.distribution.manifest.list.v2+json"
        index = json.dumps({"schemaVersion": 2, "mediaType": list_type,
                            "manifests": [{**entry, "platform": {"architecture": "amd64", "os": "linux"}}]})
        put = ("import http.client, sys; c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1])); "
               f"c.request('PUT', sys.argv[2], sys.stdin.buffer.read(), {{'Content-Type': '{list_type}'}}); "
               "sys.exit(c.getresponse().status != 201)")
        path = f"/v2/{repo.split('/', 1)[1]}/manifests/list"
        assert in_netns(PYTHON, "-c", put, str(port), path, input=index).returncode == 0
        for extra in ([], ["-v"]):
            ours = in_netns(*native, *extra, f"{repo}:list")
            theirs = in_netns("docker", "manifest", "inspect", "--insecure", *extra, f"{repo}:list")
            assert ours.returncode == theirs.returncode == 0 and ours.stdout == theirs.stdout, ours.stderr
        assert json.loads(ours.stdout)[0]["Ref"] == f"{repo}:list@{entry['digest']}"
        missing = in_netns(*native, f"{repo}-nothing")
        assert (missing.returncode, missing.stderr) == (1, f"no such manifest: {repo}-nothing:latest\n")
    finally:
        registry.kill()
        registry.wait()
