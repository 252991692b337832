"""`coracled --userns-remap=default` through the whole stack: Docker SDK -> coracled -> runtime."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from collections.abc import Iterator

import docker
import pytest
from docker.errors import APIError

from coracle.runtime import userns
from harness import Daemon, private_daemon, unique

pytestmark = pytest.mark.root  # private daemons


@pytest.fixture(scope="module")
def remap_daemon() -> Iterator[Daemon]:
    """A private daemon with --userns-remap=default; the `coracle` user and its
    subordinate ranges are removed afterwards if this test made them."""
    saved = {p: Path(p).read_text() if os.path.exists(p) else None for p in (userns.SUBUID, userns.SUBGID)}
    try:
        pwd.getpwnam(userns.DEFAULT_USER)
        had_user = True
    except KeyError:
        had_user = False
    try:
        with private_daemon(unique("u"), extra_args=["--userns-remap=default"]) as d:
            yield d
    finally:
        if not had_user:
            subprocess.run(["userdel", userns.DEFAULT_USER], check=False, capture_output=True)
        for path, text in saved.items():
            if text is None:
                Path(path).unlink(missing_ok=True)
            else:
                Path(path).write_text(text)


@pytest.fixture
def client(remap_daemon: Daemon) -> Iterator[docker.DockerClient]:
    c = remap_daemon.sdk()
    try:
        yield c
    finally:
        for ctr in c.containers.list(all=True):
            ctr.remove(force=True)
        c.close()


def root_ids() -> tuple[int, int]:
    return userns.Remap.load(userns.DEFAULT_USER).root


def test_default_creates_the_remap_user_and_its_ranges(remap_daemon: Daemon) -> None:
    pwd.getpwnam(userns.DEFAULT_USER)
    for path in (userns.SUBUID, userns.SUBGID):
        assert any(line.startswith(f"{userns.DEFAULT_USER}:") for line in Path(path).read_text().splitlines())


def test_files_created_by_container_root_are_owned_by_the_mapped_id(client: docker.DockerClient) -> None:
    ctr = client.containers.run("busybox", ["sh", "-c", "echo hi > /made-here; id -u; cat /proc/self/uid_map"],
                                detach=True)
    assert ctr.wait()["StatusCode"] == 0
    uid, gid = root_ids()
    out = ctr.logs().decode().split()
    assert out[:4] == ["0", "0", str(uid), "65536"]  # root inside, mapped to the subordinate range
    upper = Path(ctr.attrs["GraphDriver"]["Data"]["UpperDir"])
    st = os.stat(upper / "made-here")
    assert (st.st_uid, st.st_gid) == (uid, gid)


def test_container_root_cannot_read_a_root_only_host_file(client: docker.DockerClient, tmp_path: Path) -> None:
    secrets = Path("/tmp") / unique("coracle-userns-secret-")
    secrets.mkdir(mode=0o755)
    try:
        (secrets / "key").write_text("host-secret")
        os.chmod(secrets / "key", 0o600)
        out = client.containers.run("busybox", ["sh", "-c", "id -u; cat /secrets/key; chmod 666 /secrets/key; true"],
                                    volumes={str(secrets): {"bind": "/secrets", "mode": "rw"}},
                                    remove=True, stderr=True).decode()
        assert out.startswith("0\n")
        assert "host-secret" not in out
        assert "Permission denied" in out
        assert "Operation not permitted" in out  # nor change a host file it does not own
        assert os.stat(secrets / "key").st_mode & 0o777 == 0o600
    finally:
        subprocess.run(["rm", "-rf", str(secrets)], check=False)


def test_userns_host_opts_out(client: docker.DockerClient) -> None:
    ctr = client.containers.run("busybox", ["sh", "-c", "echo hi > /made-here; cat /proc/self/uid_map"],
                                userns_mode="host", detach=True)
    assert ctr.wait()["StatusCode"] == 0
    assert ctr.logs().decode().split() == ["0", "0", "4294967295"]  # the host's own map
    st = os.stat(Path(ctr.attrs["GraphDriver"]["Data"]["UpperDir"]) / "made-here")
    assert st.st_uid == 0


def test_privileged_needs_userns_host(client: docker.DockerClient) -> None:
    with pytest.raises(APIError) as err:
        client.containers.create("busybox", "true", privileged=True)
    assert err.value.status_code == 400
    assert "user namespaces" in str(err.value)
    out = client.containers.run("busybox", ["sh", "-c", "mkdir /m; mount -t tmpfs t /m && echo MOUNTED"],
                                privileged=True, userns_mode="host", remove=True).decode()
    assert "MOUNTED" in out


def test_exec_joins_the_user_namespace_and_network_works(client: docker.DockerClient) -> None:
    ctr = client.containers.run("busybox", "sleep 60", detach=True)
    res = ctr.exec_run(["sh", "-c", "id -u; echo x > /from-exec; ip -4 -o addr show eth0"])
    assert res.exit_code == 0, res.output
    assert isinstance(res.output, bytes)
    lines = res.output.decode().splitlines()
    assert lines[0] == "0"
    assert "inet " in lines[1]  # the daemon wired the network of a namespace the container's userns owns
    upper = Path(ctr.attrs["GraphDriver"]["Data"]["UpperDir"])
    assert os.stat(upper / "from-exec").st_uid == root_ids()[0]


def test_named_volume_is_writable_by_container_root(client: docker.DockerClient) -> None:
    # the volume lives in the private daemon's data root, removed with it
    out = client.containers.run("busybox", ["sh", "-c", "echo kept > /data/f && cat /data/f"],
                                volumes={unique("uv"): {"bind": "/data", "mode": "rw"}}, remove=True).decode()
    assert out == "kept\n"


def test_device_is_bound_from_the_host(client: docker.DockerClient) -> None:
    out = client.containers.run("busybox", ["sh", "-c", "head -c 4 /dev/myzero | od -An -tx1; ls -l /dev/null"],
                                devices=["/dev/zero:/dev/myzero:r"], remove=True).decode()
    assert out.split("\n")[0].split() == ["00", "00", "00", "00"]
    assert "crw-rw-rw-" in out


def test_terminal_works(client: docker.DockerClient) -> None:
    out = client.containers.run("busybox", ["sh", "-c", "tty; id -u"], tty=True, remove=True).decode()
    assert out.split() == ["/dev/pts/0", "0"]  # a terminal of the container's devpts, in the user namespace too


@pytest.mark.parametrize("state", ["running", "stopped", "never-started"])
def test_cp_works_as_the_container_root(client: docker.DockerClient, state: str) -> None:
    """The cp helper enters the container's user namespace (or makes one with its maps for a
    stopped container): what it writes belongs to the container's root, not to host root."""
    import io
    import tarfile

    ctr = client.containers.create("busybox", ["sleep", "60"] if state == "running" else ["true"])
    if state != "never-started":
        ctr.start()
        if state == "stopped":
            ctr.wait()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("copied.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    assert ctr.put_archive("/tmp", buf.getvalue())
    stream, found = ctr.get_archive("/tmp/copied.txt")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tf:
        assert tf.extractfile("copied.txt").read() == b"hello"  # type: ignore[union-attr]  # a regular file member
    assert found and found["name"] == "copied.txt"
    ctr.reload()
    st = os.stat(Path(ctr.attrs["GraphDriver"]["Data"]["UpperDir"]) / "tmp" / "copied.txt")
    assert (st.st_uid, st.st_gid) == root_ids()


@pytest.mark.parametrize("state", ["running", "stopped"])
def test_diff_and_export_in_the_user_namespace(client: docker.DockerClient, state: str) -> None:
    """The diff and export helpers mount the layers in the container's user namespace: the
    container's changes are seen, and export shows its root's files as root's (uid 0)."""
    import io
    import tarfile

    ctr = client.containers.run("busybox", ["sh", "-c", "echo r > /remapped; rm /etc/group; touch /done; "
                                            + ("exec sleep 60" if state == "running" else "true")], detach=True)
    if state == "running":
        ctr.exec_run(["sh", "-c", "until [ -e /done ]; do sleep 0.1; done"])
    else:
        ctr.wait()
    found = {c["Path"]: c["Kind"] for c in ctr.diff()}
    assert found["/remapped"] == 1 and found["/etc/group"] == 2
    with tarfile.open(fileobj=io.BytesIO(b"".join(ctr.export()))) as tf:  # type: ignore[arg-type]  # the stubs say export() returns str; it yields bytes
        member = tf.getmember("remapped")
        assert tf.extractfile(member).read() == b"r\n"  # type: ignore[union-attr]  # a regular file member
        assert (member.uid, member.gid) == (0, 0)  # as Docker maps them back with --userns-remap
        assert "etc/group" not in tf.getnames()
