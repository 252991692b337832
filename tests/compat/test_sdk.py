"""The docker Python SDK (7.x) against coracled: the calls scripts use most."""

from __future__ import annotations

import io
import tarfile
from typing import cast

import docker
import pytest

from harness import Daemon, unique


def test_ping_version_negotiation(daemon: Daemon) -> None:
    for version in ("1.24", "1.41", "1.45", "auto"):
        c = docker.DockerClient(base_url=daemon.host, version=version, timeout=30)
        try:
            assert c.ping() is True
            assert c.version()["Os"] == "linux"
            assert c.containers.list(all=True) is not None
        finally:
            c.close()


def test_containers_run_attached_and_detached(client: docker.DockerClient) -> None:
    out = client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2"], remove=True,
                                stdout=True, stderr=True)
    assert sorted(out.decode().split()) == ["err", "out"]
    with pytest.raises(docker.errors.ContainerError) as failed:
        client.containers.run("busybox", ["sh", "-c", "echo boom >&2; exit 3"], remove=True)
    assert failed.value.exit_status == 3
    assert b"boom" in failed.value.stderr  # type: ignore[operator]  # the stubs say str; the SDK gives the log's bytes
    ctr = client.containers.run("busybox", ["sh", "-c", "for i in 1 2 3; do echo l$i; sleep 0.1; done"],
                                detach=True, name=unique("sd"))
    assert list(ctr.logs(stream=True, follow=True)) == [b"l1\n", b"l2\n", b"l3\n"]
    assert ctr.wait(timeout=20)["StatusCode"] == 0
    ctr.reload()
    assert ctr.status == "exited"
    ctr.remove()


def test_exec_run_stream_and_demux(client: docker.DockerClient) -> None:
    ctr = client.containers.run("busybox", "sleep 60", detach=True, name=unique("se"))
    code, (out, err) = ctr.exec_run(["sh", "-c", "echo o; echo e >&2; exit 2"], demux=True)
    assert (code, out, err) == (2, b"o\n", b"e\n")
    result = ctr.exec_run(["sh", "-c", "echo o1; sleep 0.1; echo e1 >&2; sleep 0.1; echo o2"], stream=True, demux=True)
    chunks = cast("list[tuple[bytes | None, bytes | None]]", list(result.output))  # demuxed: (stdout, stderr)
    assert b"".join(o for o, _ in chunks if o) == b"o1\no2\n"
    assert b"".join(e for _, e in chunks if e) == b"e1\n"
    code, printed = ctr.exec_run("sh -c 'echo $A $(id -u) $(pwd)'", environment={"A": "b"}, user="nobody",
                                 workdir="/tmp")
    assert (code, printed) == (0, b"b 65534 /tmp\n")
    exec_id = client.api.exec_create(ctr.id, ["sh", "-c", "exit 9"])["Id"]
    client.api.exec_start(exec_id)
    assert client.api.exec_inspect(exec_id)["ExitCode"] == 9


def test_inspect_list_filters(client: docker.DockerClient) -> None:
    tag = unique("lb")
    a = client.containers.run("busybox", "sleep 60", detach=True, labels={"suite": tag, "role": "a"}, name=unique("la"))
    b = client.containers.run("busybox", "true", detach=True, labels={"suite": tag, "role": "b"}, name=unique("lb"))
    b.wait()
    info = client.api.inspect_container(str(a.id))
    assert info["State"]["Running"] and info["State"]["Pid"] > 0 and info["Config"]["Labels"]["role"] == "a"
    assert [c.id for c in client.containers.list(filters={"label": f"suite={tag}"})] == [a.id]
    assert {c.id for c in client.containers.list(all=True, filters={"label": f"suite={tag}"})} == {a.id, b.id}
    assert [c.id for c in client.containers.list(all=True, filters={"label": [f"suite={tag}", "role=b"]})] == [b.id]
    exited = client.containers.list(all=True, filters={"status": "exited", "label": f"suite={tag}"})
    assert [c.id for c in exited] == [b.id]
    assert [c.id for c in client.containers.list(filters={"name": str(a.name)})] == [a.id]
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("no-such-" + tag)
    with pytest.raises(docker.errors.APIError) as bad:
        client.containers.list(filters={"no-such-filter": "x"})
    assert bad.value.status_code == 400


def test_networks_create_connect(client: docker.DockerClient) -> None:
    net = client.networks.create(unique("sn"), driver="bridge", labels={"k": "v"})
    ctr = client.containers.run("busybox", "sleep 60", detach=True, name=unique("sc"))
    try:
        net.connect(ctr, aliases=["svc-alias"])
        ctr.reload()
        assert set(ctr.attrs["NetworkSettings"]["Networks"]) == {"bridge", net.name}
        net.reload()
        assert ctr.id in net.attrs["Containers"]
        peer = client.containers.run("busybox", "sleep 60", detach=True, network=net.name, name=unique("sp"))
        code, out = peer.exec_run(["ping", "-c", "1", "-W", "2", "svc-alias"])
        assert code == 0, out
        net.disconnect(ctr)
        ctr.reload()
        assert set(ctr.attrs["NetworkSettings"]["Networks"]) == {"bridge"}
        peer.remove(force=True)
    finally:
        ctr.remove(force=True)
        net.remove()


def test_images_load_save_and_archive(client: docker.DockerClient) -> None:
    image = client.images.get("busybox")
    data = b"".join(image.save(named=True))
    repo = unique("ld")
    image.tag(repo, "x")
    loaded = client.images.load(data)
    assert [i.id for i in loaded] == [image.id]
    assert f"{repo}:x" in client.images.get(f"{repo}:x").tags
    client.images.remove(f"{repo}:x")
    ctr = client.containers.run("busybox", "sleep 60", detach=True, name=unique("sa"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("from-sdk.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    assert ctr.put_archive("/tmp", buf.getvalue())
    stream, stat = ctr.get_archive("/tmp/from-sdk.txt")
    assert stat and stat["name"] == "from-sdk.txt" and stat["size"] == 5
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        assert tar.extractfile("from-sdk.txt").read() == b"hello"  # type: ignore[union-attr]  # a regular file member


def test_attach_logs_and_stream(client: docker.DockerClient) -> None:
    done = client.containers.run("busybox", ["sh", "-c", "echo a1; echo a2 >&2"], detach=True, name=unique("aa"))
    done.wait()
    assert done.attach(stdout=True, stderr=True, logs=True, stream=False) == b"a1\na2\n"  # logs only, no wait
    live = client.containers.run("busybox", ["sh", "-c", "echo b1; sleep 0.3; echo b2"], detach=True, name=unique("ab"))
    assert b"".join(live.attach(stdout=True, stderr=True, stream=True, logs=True)) == b"b1\nb2\n"
    live.reload()
    assert live.status == "exited"  # the stream ends once the exit is recorded
    later = client.containers.create("busybox", ["sh", "-c", "echo c1"], name=unique("ac"))
    sock = later.attach_socket(params={"stdout": 1, "stderr": 1, "stream": 1})
    later.start()
    data = b""
    while chunk := sock._sock.recv(4096):  # type: ignore[union-attr]  # the socket under the SDK's SocketIO
        data += chunk
    sock.close()
    assert data == b"\x01\x00\x00\x00\x00\x00\x00\x03c1\n"  # attached before start: nothing missed
