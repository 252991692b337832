"""Bad numbers, subnets and bodies get a clear 400 and leave nothing behind; good ones take effect."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import tarfile
from pathlib import Path
from collections.abc import Callable, Iterator

import docker
import pytest
from docker.errors import APIError
from docker.types import IPAMConfig, IPAMPool

from harness import SESSION_TAG, Daemon, exec_output, private_daemon

pytestmark = pytest.mark.root  # private daemons


def bridges(daemon: Daemon) -> list[str]:
    links = json.loads(daemon.netns_exec("ip", "-j", "link", "show", "type", "bridge").stdout)
    return [link["ifname"] for link in links]


@pytest.fixture
def host_address(daemon: Daemon, unique: Callable[[str], str]) -> Iterator[str]:
    """An address of the daemon's host on an interface of its own (one end of a veth pair)."""
    name = unique("dm")
    daemon.netns_exec("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
    try:
        daemon.netns_exec("ip", "addr", "add", "198.18.77.1/24", "dev", name)
        yield "198.18.77.1"
    finally:
        daemon.netns_exec("ip", "link", "del", name, check=False)


def test_special_and_host_subnets_are_refused(client: docker.DockerClient, daemon: Daemon,
                                              unique: Callable[[str], str], host_address: str) -> None:
    networks, devices = {n.id for n in client.networks.list()}, bridges(daemon)
    refused = {"127.0.0.0/8": "loopback", "127.5.0.0/16": "loopback", "224.1.0.0/16": "multicast",
               "169.254.0.0/16": "link-local", "0.0.0.0/0": "unspecified", "240.0.0.0/24": "reserved",
               "198.18.0.0/16": f"it contains {host_address}, an address of this host"}
    for subnet, why in refused.items():
        with pytest.raises(APIError) as err:
            client.networks.create(unique("n-"), ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]))
        assert err.value.status_code == 400, subnet
        assert why in str(err.value.explanation), subnet
    assert {n.id for n in client.networks.list()} == networks and bridges(daemon) == devices
    fine = client.networks.create(unique("n-"), ipam=IPAMConfig(pool_configs=[IPAMPool(subnet="198.19.77.0/24")]))
    fine.remove()


def test_out_of_range_numbers_are_refused_at_create(client: docker.DockerClient, daemon: Daemon) -> None:
    before = len(client.containers.list(all=True))
    refused = {"ShmSize": (-1, "SHM size can not be less than 0"),
               "MemorySwappiness": (200, "Invalid value: 200, valid memory swappiness range is 0-100"),
               "OomScoreAdj": (5000, "Invalid value 5000, range for oom score adj is [-1000, 1000]")}
    for key, (value, message) in refused.items():
        status, body = daemon.api("POST", "/containers/create",
                                  {"Image": "busybox", "Cmd": ["true"], "HostConfig": {key: value}})
        assert (status, body) == (400, {"message": message}), key
    status, body = daemon.api("POST", "/containers/create", {"Image": "busybox", "HostConfig": {"OomScoreAdj": -1001}})
    assert status == 400 and "range for oom score adj" in body["message"]
    assert len(client.containers.list(all=True)) == before


def test_oom_score_adj_shm_size_and_swappiness_take_effect(client: docker.DockerClient) -> None:
    ctr = client.containers.run("busybox", "sleep 60", detach=True, oom_score_adj=500, shm_size="8m",
                                mem_swappiness=7)
    assert exec_output(ctr, "cat /proc/1/oom_score_adj /proc/self/oom_score_adj").split() == [b"500", b"500"]
    assert exec_output(ctr, "df -k /dev/shm").split()[-5] == b"8192"
    swappiness = Path("/sys/fs/cgroup/memory")
    if swappiness.is_dir():  # cgroup v1 (v2 has no per-cgroup swappiness)
        assert exec_output(ctr, "cat /sys/fs/cgroup/memory/memory.swappiness").strip() == b"7"


def test_deeply_nested_json_is_a_bad_request(daemon: Daemon) -> None:
    for body in (b"[" * 200_000, json.dumps({"Image": "busybox", "Labels": {"a": json.loads("[" * 150 + "]" * 150)}})
                 .encode()):
        status, answer = daemon.api("POST", "/containers/create", body)
        assert status == 400 and "nested deeper than" in answer["message"]
    status, answer = daemon.api("GET", "/containers/json?filters=" + "%5B" * 5000)
    assert status == 400


def _gzip_tar(members: dict[str, bytes], compress: Callable[[bytes], bytes] = gzip.compress) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return compress(raw.getvalue())


@pytest.fixture
def small_bound_daemon() -> Iterator[Daemon]:
    with private_daemon(SESSION_TAG + "mx", extra_args=["--max-image-size", "1m"]) as d:
        yield d


def _image_content(d: Daemon) -> list[str]:
    root = d.data_root / "images"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "tmp" not in p.parts)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gzip", "bzip2", "xz"])
def test_load_and_import_stop_at_the_daemons_unpacked_size_bound(small_bound_daemon: Daemon, tmp_path: Path,
                                                                 compress: Callable[[bytes], bytes]) -> None:
    d = small_bound_daemon
    bomb = _gzip_tar({"zeros": bytes(4 << 20)}, compress)  # 4 MiB of zeros in a few kilobytes
    assert len(bomb) < 64 << 10
    before = _image_content(d)
    (tmp_path / "rootfs.tgz").write_bytes(bomb)
    out = d.docker("import", str(tmp_path / "rootfs.tgz"), "bomb:import", check=False)
    assert out.returncode != 0 and "more than 1048576 bytes" in out.stderr and "--max-image-size" in out.stderr
    layer = _gzip_tar({"zeros": bytes(4 << 20)}, lambda raw: raw)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}})
    archive = _gzip_tar({"manifest.json": json.dumps([{"Config": "config.json", "RepoTags": ["bomb:load"],
                                                        "Layers": ["layer.tar"]}]).encode(),
                         "config.json": config.encode(), "layer.tar": layer}, compress)
    (tmp_path / "image.tgz").write_bytes(archive)
    out = d.docker("load", "-i", str(tmp_path / "image.tgz"), check=False)
    assert out.returncode != 0 and "more than 1048576 bytes" in out.stderr
    assert _image_content(d) == before  # nothing left behind
    assert "bomb" not in d.docker("images").stdout
    small = _gzip_tar({"hello": b"hello\n"})
    (tmp_path / "small.tgz").write_bytes(small)
    d.docker("import", str(tmp_path / "small.tgz"), "small:ok")  # below the bound: fine
