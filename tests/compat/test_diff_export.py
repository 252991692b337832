"""`docker diff` and `docker export`: the container's own layer and its whole filesystem.

Docker's behaviour checked: diff lists `A` (added), `C` (changed) and `D`
(deleted) paths depth first in name order, a changed directory before what
changed inside it, and nothing for a directory merely copied up; export is a
tar of the container's filesystem (not its volumes), running or stopped, that
`docker import` turns into a runnable image.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import docker

from compat_helpers import Docker
from harness import Daemon, unique

CORACLE = [sys.executable, "-c", "from coracle.cli.main import main; main()"]

CHANGES = ("mkdir /new && echo hi > /new/file && echo changed >> /etc/passwd && rm /etc/group && "
           "rm -rf /home && mkdir /home && touch /home/fresh")


def test_diff_of_a_stopped_container(docker: Docker) -> None:
    name = unique("df")
    docker("run", "--name", name, "busybox", "sh", "-c", CHANGES)
    lines = docker("diff", name).stdout.splitlines()
    assert lines[:4] == ["C /etc", "D /etc/group", "C /etc/passwd", "C /home"]
    assert "A /home/fresh" in lines
    assert lines[-2:] == ["A /new", "A /new/file"]
    assert not any(line.endswith(" /bin") for line in lines)  # untouched image directories


def test_diff_of_a_running_container_and_the_sdk(docker: Docker, client: docker.DockerClient) -> None:
    container = client.containers.run("busybox", ["sh", "-c", "echo x > /tmp/made; rm /bin/ls; exec sleep 60"],
                                      detach=True, name=unique("dr"))
    container.exec_run(["sh", "-c", "until [ -e /tmp/made ]; do sleep 0.1; done"])
    found = {c["Path"]: c["Kind"] for c in container.diff()}
    assert found["/tmp"] == 0 and found["/tmp/made"] == 1
    assert found["/bin"] == 0 and found["/bin/ls"] == 2
    assert "/proc" not in found and "/dev" not in found  # the runtime's mounts are not changes
    assert docker("diff", "no-such-container", check=False).stderr.strip().endswith(
        "No such container: no-such-container")


def test_export_of_a_stopped_container_imports_and_runs(docker: Docker, tmp_path: Path) -> None:
    name = unique("ex")
    docker("run", "--name", name, "-v", "/data", "busybox", "sh", "-c",
           "echo exported > /marker; echo in-volume > /data/v; rm /etc/group")
    out = tmp_path / "fs.tar"
    docker("export", "-o", str(out), name)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("marker").read() == b"exported\n"  # type: ignore[union-attr]  # a regular file member
    assert "bin/busybox" in names and "etc/passwd" in names
    assert "etc/group" not in names  # deleted in the container
    assert "data/v" not in names  # volumes are not part of the container's filesystem
    image = unique("imported")
    docker("import", str(out), image)
    assert docker("run", "--rm", image, "cat", "/marker").stdout == "exported\n"
    docker("rmi", image)


def test_export_of_a_running_container_with_the_sdk(client: docker.DockerClient) -> None:
    container = client.containers.run("busybox", ["sh", "-c", "echo live > /live; exec sleep 60"],
                                      detach=True, name=unique("er"))
    container.exec_run(["sh", "-c", "until [ -e /live ]; do sleep 0.1; done"])
    data = b"".join(container.export())  # type: ignore[arg-type]  # the stubs say export() returns str; it yields bytes
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("live").read() == b"live\n"  # type: ignore[union-attr]  # a regular file member
        assert not any(n.startswith("proc/") for n in tar.getnames())  # no kernel filesystems


def test_a_planted_symlink_never_brings_host_files(docker: Docker, tmp_path: Path) -> None:
    """The container points symlinks at a host directory and keeps swapping a directory of its
    own for one while export and diff read it: symlinks come out as symlinks, no host file
    and no host file name appears."""
    host_dir = tmp_path / "host-secrets"
    host_dir.mkdir()
    (host_dir / "secret-name").write_text("host secret content\n")
    name = unique("ea")
    docker("run", "-d", "--name", name, "busybox", "sh", "-c",
           f"ln -s {host_dir} /planted; ln -s {host_dir}/secret-name /planted-file; mkdir -p /swap; "
           f"echo own > /swap/own; touch /ready; "
           f"while true; do mv /swap /swap.d; ln -s {host_dir} /swap; rm /swap; mv /swap.d /swap; done")
    docker("exec", name, "sh", "-c", "until [ -e /ready ]; do sleep 0.1; done")
    for attempt in range(3):
        out = tmp_path / f"fs{attempt}.tar"
        docker("export", "-o", str(out), name)
        with tarfile.open(out) as tar:
            members = tar.getmembers()
            assert not any(m.name.rsplit("/", 1)[-1] == "secret-name" for m in members)
            planted = tar.getmember("planted")
            assert planted.issym() and planted.linkname == str(host_dir)
            for m in members:
                if m.isreg():
                    assert b"host secret" not in tar.extractfile(m).read()  # type: ignore[union-attr]  # a file
        changes = docker("diff", name).stdout
        assert "A /planted" in changes and "secret-name" not in changes
    assert (host_dir / "secret-name").read_text() == "host secret content\n"


def test_native_cli_diff_and_export(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    name = unique("nc")
    docker("run", "--name", name, "busybox", "sh", "-c", "echo native > /native; rm /etc/group")
    env = {**os.environ, "CORACLE_HOST": daemon.host}
    res = subprocess.run(CORACLE + ["diff", name], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stdout == docker("diff", name).stdout
    assert "A /native" in res.stdout.splitlines() and "D /etc/group" in res.stdout.splitlines()
    out = tmp_path / "native.tar"
    res = subprocess.run(CORACLE + ["export", "-o", str(out), name], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    with tarfile.open(out) as tar:
        assert tar.extractfile("native").read() == b"native\n"  # type: ignore[union-attr]  # a regular file member
    res = subprocess.run(CORACLE + ["diff", "no-such-ctr"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1 and "No such container: no-such-ctr" in res.stderr
