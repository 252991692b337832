"""Every host path derived from a request stays inside the container's root.

Device, bind, tmpfs and --mount destinations, volume names and working
directories come from the API client. Each test aims one of them at a marker
under the test's own scratch directory, climbing out with `..`; the marker
must be untouched and nothing may appear next to it. `..` stops at the
container's root, as for the container's own processes (and Docker's runtime).
"""

from __future__ import annotations

from collections.abc import Callable
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.errors import APIError
from docker.types import Mount

from harness import Daemon, exec_output
from security_support import run_script

CLIMB = "/.." * 24  # more levels than any data root has: joined naively, this reaches the host's /


def test_device_destination_cannot_replace_a_host_file(client: docker.DockerClient, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("intact")
    out = run_script(client, f"test -c {victim} && echo DEVICE-INSIDE", devices=[f"/dev/null:/dev{CLIMB}{victim}:rwm"])
    assert stat.S_ISREG(os.lstat(victim).st_mode) and victim.read_text() == "intact"
    assert "DEVICE-INSIDE" in out  # the node is made where the container sees that path


def test_bind_tmpfs_and_mount_destinations_stay_inside(client: docker.DockerClient, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "marker").write_text("from-source\n")
    targets = {kind: tmp_path / f"{kind}-target" for kind in ("bind", "tmpfs", "mount")}
    out = run_script(client, f"cat {targets['bind']}/marker; cat {targets['mount']}/marker; "
                             f"grep -c ' {targets['tmpfs']} tmpfs' /proc/mounts",
              volumes={str(source): {"bind": CLIMB + str(targets["bind"]), "mode": "ro"}},
              tmpfs={CLIMB + str(targets["tmpfs"]): ""},
              mounts=[Mount(CLIMB + str(targets["mount"]), str(source), type="bind", read_only=True)])
    assert out.split() == ["from-source", "from-source", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]  # nothing made on the host


def test_destination_root_is_refused(client: docker.DockerClient, tmp_path: Path) -> None:
    before = len(client.containers.list(all=True))
    bad: list[dict[str, Any]] = [{"volumes": {str(tmp_path): {"bind": "/", "mode": "rw"}}},
           {"volumes": {str(tmp_path): {"bind": "/tmp/../..", "mode": "rw"}}},
           {"mounts": [Mount("/", str(tmp_path), type="bind")]},
           {"tmpfs": {"/": ""}},
           {"mounts": [Mount("/.", "", type="tmpfs")]}]
    for kwargs in bad:
        with pytest.raises(APIError) as err:
            client.containers.create("busybox", "true", **kwargs)
        assert err.value.status_code == 400, kwargs
        assert "destination can't be '/'" in str(err.value.explanation), kwargs
    assert len(client.containers.list(all=True)) == before


def test_volume_names_and_working_dirs_cannot_climb_out(client: docker.DockerClient, daemon: Daemon,
                                                         tmp_path: Path) -> None:
    with pytest.raises(APIError) as err:
        client.containers.create("busybox", "true", volumes={f"..{CLIMB}{tmp_path}/vol": {"bind": "/data"}})
    assert err.value.status_code == 400 and "invalid characters for a local volume name" in str(err.value.explanation)
    with pytest.raises(APIError) as err:
        client.containers.create("busybox", "true", working_dir="work/../..")
    assert err.value.status_code == 400
    assert err.value.explanation == "the working directory 'work/../..' is invalid, it needs to be an absolute path"
    workdir = tmp_path / "workdir"
    assert run_script(client, "pwd", working_dir=CLIMB + str(workdir)).strip() == str(workdir)
    ctr = client.containers.run("busybox", "sleep 60", detach=True)
    assert exec_output(ctr, "pwd", workdir=CLIMB + str(workdir)).decode().strip() == str(workdir)
    refused = daemon.api("POST", f"/containers/{ctr.id}/exec", {"Cmd": ["pwd"], "WorkingDir": "rel"})
    assert refused[0] == 400
    assert not workdir.exists() and not (tmp_path / "vol").exists()


@pytest.fixture
def host_mount(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory made a mount point of its own (shared or not as the test makes it)."""
    point = tmp_path / "point"
    point.mkdir()
    subprocess.run(["mount", "--bind", str(point), str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-R", "-l", str(point)], check=False)


def test_shared_and_slave_binds_see_mounts_made_later_on_the_host(client: docker.DockerClient,
                                                                  host_mount: Path) -> None:
    subprocess.run(["mount", "--make-shared", str(host_mount)], check=True)
    (host_mount / "late").mkdir()
    binds = {"rshared": "/shared", "rslave": "/slave", "rprivate": "/private"}
    ctr = client.containers.run("busybox", "sleep 60", detach=True,
                                mounts=[Mount(dst, str(host_mount), type="bind", propagation=mode)
                                        for mode, dst in binds.items()])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "late", str(host_mount / "late")], check=True)
    (host_mount / "late" / "marker").write_text("mounted-later\n")
    seen = {mode: exec_output(ctr, f"cat {dst}/late/marker").decode().strip() for mode, dst in binds.items()}
    assert seen["rshared"] == seen["rslave"] == "mounted-later"
    assert "mounted-later" not in seen["rprivate"]
    inspect = {m["Destination"]: m["Propagation"] for m in client.api.inspect_container(str(ctr.id))["Mounts"]}
    assert inspect == {dst: mode for mode, dst in binds.items()}


def test_shared_bind_of_a_private_source_is_refused(client: docker.DockerClient, host_mount: Path) -> None:
    subprocess.run(["mount", "--make-private", str(host_mount)], check=True)
    with pytest.raises(APIError) as err:
        client.containers.run("busybox", "true", detach=True,
                              volumes={str(host_mount): {"bind": "/d", "mode": "rshared"}})
    assert err.value.status_code == 400
    assert f"path {host_mount} is mounted on {host_mount} but it is not a shared mount" in str(err.value.explanation)
    with pytest.raises(APIError) as err:
        client.containers.create("busybox", "true", volumes={str(host_mount): {"bind": "/d", "mode": "rshared,rslave"}})
    assert err.value.status_code == 400 and "invalid mode" in str(err.value.explanation)


@pytest.fixture
def symlinked_image(daemon: Daemon, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[tuple[str, Path]]:
    """A malicious image: busybox, and /sbin an absolute symlink to a directory of the host."""
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    layer = tmp_path / "image.tar"
    with tarfile.open(layer, "w") as tf:
        tf.add("/bin/busybox", "bin/busybox")
        link = tarfile.TarInfo("sbin")
        link.type, link.linkname = tarfile.SYMTYPE, str(host_dir)
        tf.addfile(link)
    name = unique("evil") + ":1"
    daemon.docker("import", str(layer), name)
    try:
        yield name, host_dir
    finally:
        daemon.docker("rmi", "-f", name, check=False)


def test_image_symlinks_do_not_lead_mounts_out_of_the_root(client: docker.DockerClient,
                                                           symlinked_image: tuple[str, Path]) -> None:
    image, host_dir = symlinked_image
    try:
        out = client.containers.run(image, ["/bin/busybox", "sh", "-c",
                                            "/bin/busybox ls /sbin/; /bin/busybox stat -f -c %T /sbin/x"],
                                    init=True, remove=True, tmpfs={"/sbin/x": ""}).decode()
    except APIError as exc:
        out = str(exc)
    assert list(host_dir.iterdir()) == []  # nothing made on the host through the image's symlink
    assert out.split() == ["docker-init", "x", "tmpfs"]  # made where the container sees /sbin
