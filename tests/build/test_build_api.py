"""POST /build as the SDK and docker-compose use it, and its handling of bad or vanishing clients."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import quote

import docker as docker_sdk
import pytest

from build_helpers import Docker, write
from harness import Daemon, start_registry, unique


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return out.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _work_dirs(daemon: Daemon) -> list[str]:
    return os.listdir(daemon.data_root / "build" / "work")


def _build_containers(daemon: Daemon) -> list[dict]:
    _, found = daemon.api("GET", "/containers/json?all=1&filters=" + quote(json.dumps({"label": ["coracle.build"]})))
    return found


@pytest.mark.parametrize("entries, message", [
    ([_file("../escape.txt")], "escape.txt"),
    ([_link("etc", "/etc")], "absolute path"),
    ([_link("up", "../../..")], "up"),
])
def test_hostile_context_is_refused_and_leaves_nothing(daemon: Daemon, entries: list, message: str) -> None:
    body = _tar([*entries, _file("Dockerfile")], {"Dockerfile": b"FROM busybox\nCOPY . /\n"})
    status, answer = daemon.api("POST", "/build?t=" + unique("bad"), body)
    assert status == 400 and message in answer["message"]
    assert _work_dirs(daemon) == []


def test_absolute_entry_names_stay_inside_the_context(daemon: Daemon, docker: Docker) -> None:
    name = unique("escape")
    mode = _file(f"/tmp/{name}")
    mode.mode = 0o4755
    body = _tar([mode, _file("Dockerfile")], {f"/tmp/{name}": b"payload\n",
                                             "Dockerfile": f"FROM busybox\nCOPY tmp/{name} /copied\n".encode()})
    tag = unique("abs")
    status, _ = daemon.api("POST", f"/build?t={tag}", body)
    assert status == 200 and not os.path.exists(f"/tmp/{name}")
    assert docker("run", "--rm", tag, "stat", "-c", "%a", "/copied").stdout == "4755\n"  # modes as sent


def test_dockerfile_outside_the_context_is_refused(daemon: Daemon) -> None:
    body = _tar([_file("Dockerfile")], {"Dockerfile": b"FROM busybox\n"})
    status, answer = daemon.api("POST", "/build?dockerfile=../../Dockerfile", body)
    assert status == 400 and "outside the build context" in answer["message"]
    assert _work_dirs(daemon) == []


def test_client_that_disconnects_stops_the_build(daemon: Daemon) -> None:
    body = _tar([_file("Dockerfile")], {"Dockerfile": b"FROM busybox\nRUN echo started && sleep 600\n"})
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(daemon.sock)
        s.sendall(b"POST /build HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        seen = b""
        while b"\"started\\n\"" not in seen:  # the RUN's output, not the step line
            chunk = s.recv(65536)
            assert chunk, seen
            seen += chunk
        assert _build_containers(daemon)  # the RUN is a container of the engine
    deadline = time.monotonic() + 60
    while (_build_containers(daemon) or _work_dirs(daemon)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _build_containers(daemon) == [] and _work_dirs(daemon) == []


def test_daemon_killed_mid_build_leaves_nothing_after_restart(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    body = _tar([_file("Dockerfile")], {"Dockerfile": b"FROM busybox\nRUN echo started && sleep 600\n"})
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(d.sock)
        s.sendall(b"POST /build HTTP/1.1\r\nHost: d\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        seen = b""
        while b"\"started\\n\"" not in seen:  # the RUN's output, not the step line
            chunk = s.recv(65536)
            assert chunk, seen
            seen += chunk
        d.stop(sig=9)
    d.start()
    assert _build_containers(d) == [] and _work_dirs(d) == []
    ps = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True).stdout.split()
    assert not [p for p in ps if Path(f"/proc/{p}/cgroup").exists() and d.cgroup_parent in
                Path(f"/proc/{p}/cgroup").read_text()]


def test_sdk_build_with_buildargs_target_and_failure(daemon: Daemon, tmp_path: Path) -> None:
    client = daemon.sdk()
    write(tmp_path, {"Dockerfile": """\
FROM busybox AS base
ARG FLAVOUR=plain
RUN echo "$FLAVOUR" > /flavour
FROM base AS extra
RUN echo extra > /extra
"""})
    tag = unique("sdk")
    image, logs = client.images.build(path=str(tmp_path), tag=tag, buildargs={"FLAVOUR": "spicy"}, target="base")
    assert any("Successfully built" in str(entry.get("stream", "")) for entry in logs if isinstance(entry, dict))
    assert image.tags == [f"{tag}:latest"]
    assert client.containers.run(tag, ["cat", "/flavour"], remove=True) == b"spicy\n"
    with pytest.raises(docker_sdk.errors.ContainerError):
        client.containers.run(tag, ["ls", "/extra"], remove=True)  # --target stopped before `extra`

    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo nope >&2; exit 42\n"})
    with pytest.raises(docker_sdk.errors.BuildError) as err:
        client.images.build(path=str(tmp_path))
    assert "returned a non-zero code: 42" in str(err.value)
    assert any("nope" in entry.get("stream", "") for entry in err.value.build_log)


COMPOSE = shutil.which("docker-compose") or ""


@pytest.mark.skipif(not COMPOSE, reason="needs docker-compose")
def test_compose_up_build_of_two_services(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    project = unique("cb")
    write(tmp_path, {
        "docker-compose.yml": """\
version: "3.7"
services:
  web:
    build: ./web
    networks: [appnet]
  client:
    build:
      context: ./client
      args:
        TARGET: web
    networks: [appnet]
    depends_on: [web]
networks:
  appnet: {}
""",
        "web/Dockerfile": "FROM busybox\nCOPY index.html /www/index.html\n"
                          "CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
        "web/index.html": "built by compose\n",
        "client/Dockerfile": "FROM busybox\nARG TARGET\nENV TARGET=$TARGET\n"
                             "CMD [\"sh\", \"-c\", \"until wget -q -O /tmp/got http://$TARGET/; do sleep 0.2; done; "
                             "cat /tmp/got; exec sleep 300\"]\n",
    })
    env = {**os.environ, "DOCKER_HOST": daemon.host}

    def compose(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([COMPOSE, "-p", project, "--no-ansi", *args], cwd=tmp_path, capture_output=True,
                             text=True, env=env, timeout=180)
        assert res.returncode == 0, f"docker-compose {args} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        return res

    try:
        compose("up", "--build", "-d")
        deadline = time.monotonic() + 30
        logs = ""
        while "built by compose" not in logs and time.monotonic() < deadline:
            logs = compose("logs", "client").stdout
            time.sleep(0.2)
        assert "built by compose" in logs
        images = docker("images", "--format", "{{.Repository}}").stdout.split()
        assert f"{project}_web" in images and f"{project}_client" in images
    finally:
        subprocess.run([COMPOSE, "-p", project, "--no-ansi", "down", "--rmi", "local", "-t", "1"], cwd=tmp_path,
                       capture_output=True, env=env, timeout=120)


REGISTRY = "/usr/bin/docker-registry"


@pytest.mark.skipif(not os.path.exists(REGISTRY), reason="needs Debian's docker-registry")
def test_built_image_pushes_pulls_and_serves_as_cache(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    """Push a built image to a registry on the daemon's loopback; its manifest has one layer per
    non-empty history entry; pulled back (no cache records left) it is a cache source."""
    registry, port = start_registry(daemon.netns, tmp_path)
    ref = f"127.0.0.1:{port}/built/{unique('app')}:1"
    write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo one > /one\nENV K=v\nCOPY f.txt /f.txt\nRUN true\n",
                             "f.txt": "f\n"})
    try:
        docker("build", "-t", ref, str(tmp_path / "ctx"))
        local = json.loads(docker("image", "inspect", ref).stdout)[0]
        history = docker("history", "--format", "{{.CreatedBy}}|{{.Size}}", ref).stdout
        docker("push", ref, timeout=60)
        repo, tag = ref.rsplit(":", 1)
        probe = (f"import urllib.request, json; r = urllib.request.Request('http://{repo.split('/', 1)[0]}/v2/"
                 f"{repo.split('/', 1)[1]}/manifests/{tag}', headers={{'Accept': "
                 "'application/vnd.docker.distribution.manifest.v2+json'}); "
                 "print(json.dumps(json.load(urllib.request.urlopen(r))))")
        manifest = json.loads(daemon.netns_exec(sys.executable, "-c", probe).stdout)
        assert len(manifest["layers"]) == len(local["RootFS"]["Layers"]) == 3  # base, RUN, COPY; `RUN true`: none
        docker("rmi", ref)
        docker("builder", "prune", "-f")
        docker("pull", ref, timeout=60)
        assert docker("history", "--format", "{{.CreatedBy}}|{{.Size}}", ref).stdout == history
        out = docker("build", "--cache-from", ref, "-t", ref, str(tmp_path / "ctx")).stdout
        assert out.count("Using cache") == 4
        assert json.loads(docker("image", "inspect", ref).stdout)[0]["Id"] == local["Id"]
    finally:
        registry.kill()
        registry.wait()
