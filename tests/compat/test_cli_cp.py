"""`docker cp` both ways, on running and stopped containers, through the archive endpoints."""

from __future__ import annotations

import base64
import json
import os
import io
import tarfile
from pathlib import Path

from compat_helpers import Docker, raw
from harness import Daemon, unique


def test_cp_out_of_a_running_container(docker: Docker, tmp_path: Path) -> None:
    name = unique("co")
    docker("run", "-d", "--name", name, "busybox", "sh", "-c",
           "mkdir -p /data/sub && echo one > /data/a.txt && echo two > /data/sub/b.txt && "
           "chmod 640 /data/a.txt && ln -s a.txt /data/link && exec sleep 60")
    docker("exec", name, "test", "-L", "/data/link")  # the setup ran
    docker("cp", f"{name}:/data/a.txt", str(tmp_path / "a.txt"))
    assert (tmp_path / "a.txt").read_text() == "one\n"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    docker("cp", f"{name}:/data", str(tmp_path / "copy"))
    assert (tmp_path / "copy/sub/b.txt").read_text() == "two\n"
    assert os.readlink(tmp_path / "copy/link") == "a.txt"  # a symlink stays a symlink
    (tmp_path / "contents").mkdir()
    docker("cp", f"{name}:/data/.", str(tmp_path / "contents"))
    assert sorted(os.listdir(tmp_path / "contents")) == ["a.txt", "link", "sub"]
    res = docker("cp", f"{name}:/data/missing", str(tmp_path / "x"), check=False)
    assert res.returncode == 1 and f"Could not find the file /data/missing in container {name}" in res.stderr


def test_cp_into_a_running_container(docker: Docker, tmp_path: Path) -> None:
    name = unique("ci")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    (tmp_path / "hello.txt").write_text("hello\n")
    (tmp_path / "tree/deep").mkdir(parents=True)
    (tmp_path / "tree/deep/f").write_text("deep\n")
    docker("cp", str(tmp_path / "hello.txt"), f"{name}:/tmp/")
    docker("cp", str(tmp_path / "hello.txt"), f"{name}:/tmp/renamed.txt")
    docker("cp", str(tmp_path / "tree"), f"{name}:/srv")
    out = docker("exec", name, "sh", "-c", "cat /tmp/hello.txt /tmp/renamed.txt /srv/deep/f").stdout
    assert out == "hello\nhello\ndeep\n"
    res = docker("cp", str(tmp_path / "hello.txt"), f"{name}:/no/such/dir/x", check=False)
    assert res.returncode == 1 and "Could not find the file /no/such/dir" in res.stderr
    res = docker("cp", str(tmp_path / "tree"), f"{name}:/tmp/hello.txt", check=False)
    assert res.returncode == 1 and "cannot copy directory" in res.stderr
    assert docker("exec", name, "cat", "/tmp/hello.txt").stdout == "hello\n"


def test_cp_with_a_stopped_container(docker: Docker, tmp_path: Path) -> None:
    """Stopped: the overlay is read from the layers (whiteouts honoured) and written to the upper dir."""
    name = unique("cs")
    docker("run", "--name", name, "busybox", "sh", "-c", "echo kept > /kept.txt; rm /etc/group")
    docker("cp", f"{name}:/kept.txt", str(tmp_path / "kept.txt"))
    assert (tmp_path / "kept.txt").read_text() == "kept\n"
    res = docker("cp", f"{name}:/etc/group", str(tmp_path / "group"), check=False)
    assert res.returncode == 1 and "Could not find the file /etc/group" in res.stderr  # the whiteout
    docker("cp", f"{name}:/etc/passwd", str(tmp_path / "passwd"))  # from the image's layer
    assert (tmp_path / "passwd").read_text().startswith("root:x:0:0:")
    (tmp_path / "new.txt").write_text("put while stopped\n")
    docker("cp", str(tmp_path / "new.txt"), f"{name}:/etc/")
    docker("commit", name, name + "img")  # read back through an image: no start needed
    out = docker("run", "--rm", name + "img", "cat", "/etc/new.txt", "/kept.txt").stdout
    assert out == "put while stopped\nkept\n"
    docker("rmi", name + "img")


def test_cp_stays_inside_the_container(docker: Docker, tmp_path: Path) -> None:
    """Symlinks made by the container resolve inside its root, never on the host."""
    name = unique("cx")
    host_dir = tmp_path / "host-only"
    host_dir.mkdir()
    docker("run", "-d", "--name", name, "busybox", "sh", "-c",
           f"ln -s /etc /tmp/etclink; ln -s {host_dir} /tmp/hostdir; exec sleep 60")
    docker("exec", name, "test", "-L", "/tmp/hostdir")
    docker("cp", f"{name}:/tmp/etclink/hostname", str(tmp_path / "hostname"))
    hostname = docker("inspect", "-f", "{{.Config.Hostname}}", name).stdout.strip()
    assert (tmp_path / "hostname").read_text().strip() == hostname
    (tmp_path / "payload").write_text("x")
    res = docker("cp", str(tmp_path / "payload"), f"{name}:/tmp/hostdir/", check=False)
    assert res.returncode != 0
    assert os.listdir(host_dir) == []


def test_cp_into_read_only_rootfs_is_refused(docker: Docker, tmp_path: Path) -> None:
    name = unique("cr")
    docker("run", "-d", "--read-only", "--name", name, "busybox", "sleep", "60")
    (tmp_path / "f").write_text("x")
    res = docker("cp", str(tmp_path / "f"), f"{name}:/", check=False)
    assert res.returncode == 1 and "read-only" in res.stderr


def test_archive_endpoints_raw(daemon: Daemon, docker: Docker) -> None:
    """HEAD gives the stat header the CLI decodes; PUT needs an existing directory."""
    name = unique("ca")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    head = raw(daemon, f"HEAD /v1.45/containers/{name}/archive?path=/etc HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
               read_until_close=False)
    assert head.startswith(b"HTTP/1.1 200")
    line = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"x-docker-container-path-stat:"))
    stat = json.loads(base64.b64decode(line.split(b":", 1)[1].strip()))
    assert stat["name"] == "etc" and stat["mode"] & (1 << 31)  # Go's os.ModeDir
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("up.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    status, body = daemon.api("PUT", f"/containers/{name}/archive?path=/etc/passwd", buf.getvalue())
    assert status == 400 and "not a directory" in body["message"]
    status, body = daemon.api("PUT", f"/containers/{name}/archive?path=/tmp", b"not a tar at all" * 100)
    assert status == 400 and "invalid archive" in body["message"]
    status, _ = daemon.api("PUT", f"/containers/{name}/archive?path=/tmp", buf.getvalue())
    assert status == 200
    assert docker("exec", name, "cat", "/tmp/up.txt").stdout == "abc"
    status, body = daemon.api("GET", f"/containers/{name}/archive")
    assert status == 400
    status, body = daemon.api("GET", f"/containers/no-such-{name}/archive?path=/")
    assert status == 404


def test_cp_with_a_paused_container(docker: Docker, tmp_path: Path) -> None:
    """The helper joins the container's cgroups but not its freezer: a paused container is copied."""
    name = unique("cp")
    docker("run", "-d", "--name", name, "busybox", "sh", "-c", "echo paused > /p.txt; exec sleep 60")
    docker("exec", name, "test", "-e", "/p.txt")
    docker("pause", name)
    docker("cp", f"{name}:/p.txt", str(tmp_path / "p.txt"))
    assert (tmp_path / "p.txt").read_text() == "paused\n"
    docker("cp", str(tmp_path / "p.txt"), f"{name}:/q.txt")
    docker("unpause", name)
    assert docker("exec", name, "cat", "/q.txt").stdout == "paused\n"
