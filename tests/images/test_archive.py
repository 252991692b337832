"""load/save/import/commit: archives as Docker writes them, whiteouts under a real overlayfs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from coracle.errors import InvalidParameter, NotFound
from coracle.images.changes import commit_config


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker_save_archive(layers: list[bytes], config_extra: dict, repo_tags: list[str],
                        gzipped_layers: bool = False) -> bytes:
    """An archive laid out exactly like classic `docker save` (Docker < 25):
    <v1 id>/{VERSION,json,layer.tar}, <config hex>.json, manifest.json, repositories."""
    diff_ids = [sha(layer) for layer in layers]
    config = {"architecture": "amd64", "os": "linux", "created": "2024-05-01T10:00:00.123456789Z",
              "config": {"Env": ["PATH=/bin"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created": "2024-05-01T10:00:00Z", "created_by": f"step {i}"} for i in range(len(layers))],
              **config_extra}
    config_bytes = json.dumps(config).encode()
    config_hex = sha(config_bytes)[7:]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        def add(name: str, data: bytes | None) -> None:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)

        v1_ids, parent = [], ""
        for layer, diff_id in zip(layers, diff_ids, strict=False):
            v1 = hashlib.sha256((parent + diff_id).encode()).hexdigest()
            v1_ids.append(v1)
            add(v1, None)
            add(f"{v1}/VERSION", b"1.0")
            add(f"{v1}/json", json.dumps({"id": v1, **({"parent": parent} if parent else {})}).encode())
            add(f"{v1}/layer.tar", gzip.compress(layer) if gzipped_layers else layer)
            parent = v1
        add(f"{config_hex}.json", config_bytes)
        add("manifest.json", json.dumps([{"Config": f"{config_hex}.json", "RepoTags": repo_tags,
                                           "Layers": [f"{v}/layer.tar" for v in v1_ids]}]).encode())
        repos: dict = {}
        for tag in repo_tags:
            name, _, t = tag.rpartition(":")
            repos.setdefault(name, {})[t] = v1_ids[-1]
        add("repositories", json.dumps(repos).encode())
    return buf.getvalue()


def test_docker_save_archive_loads(images, tar_of):
    layer1 = tar_of([("app", None), ("app/hello.txt", "hello\n")])
    layer2 = tar_of([("app/more.txt", "more\n"), ("etc", None), ("etc/link", "->", "/app/hello.txt")])
    data = docker_save_archive([layer1, layer2], {"config": {"Cmd": ["cat", "/app/hello.txt"]}},
                               ["example/app:1"], gzipped_layers=True)
    assert images.load(io.BytesIO(data)) == ["example/app:1"]
    image = images.resolve("example/app:1")
    assert image.config["Cmd"] == ["cat", "/app/hello.txt"]
    assert image.layers == [sha(layer1), sha(layer2)]
    assert image.created.startswith("2024-05-01T10:00:00")
    lower, upper = (Path(d) for d in images.layer_dirs(image))
    assert (lower / "app/hello.txt").read_text() == "hello\n"
    assert os.readlink(upper / "etc/link") == "/app/hello.txt"
    history = images.history("example/app:1")
    assert [h["CreatedBy"] for h in history] == ["step 1", "step 0"]
    assert history[0]["Id"] == image.id and history[0]["Tags"] == ["example/app:1"]
    assert history[1]["Size"] == len("hello\n")


def test_save_then_load_on_a_clean_store_keeps_the_id(images, make_store, tmp_path):
    image = images.resolve("busybox")
    images.tag("busybox", "localhost:5000/bb", "v1")
    out = tmp_path / "saved.tar"
    with open(out, "wb") as f:
        images.save(["busybox", "localhost:5000/bb:v1"], f)
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]  # a file
        index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]  # a regular file member
    assert {"manifest.json", "index.json", "oci-layout", "repositories"} <= names
    assert manifest[0]["RepoTags"] == ["busybox:latest", "localhost:5000/bb:v1"]
    assert {m["annotations"]["io.containerd.image.name"] for m in index["manifests"]} == {
        "docker.io/library/busybox:latest", "localhost:5000/bb:v1"}
    clean = make_store("clean")
    with open(out, "rb") as f:
        assert clean.load(f) == ["busybox:latest", "localhost:5000/bb:v1"]
    loaded = clean.resolve("localhost:5000/bb:v1")
    assert loaded.id == image.id and loaded.layers == image.layers
    assert Path(clean.layer_dirs(loaded)[0], "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()


def test_oci_layout_alone_loads(images, make_store, tmp_path, tar_of):
    """The same archive with manifest.json dropped is read through index.json (OCI layout)."""
    image = images.resolve("busybox")
    saved = io.BytesIO()
    images.save(["busybox"], saved)
    saved.seek(0)
    oci = io.BytesIO()
    with tarfile.open(fileobj=saved) as src, tarfile.open(fileobj=oci, mode="w:gz") as dst:
        for member in src.getmembers():
            if member.name not in ("manifest.json", "repositories"):
                dst.addfile(member, src.extractfile(member))
    oci.seek(0)
    clean = make_store("oci")
    assert clean.load(oci) == ["busybox:latest"]
    assert clean.resolve("busybox").id == image.id


def test_load_refuses_a_layer_that_does_not_match_its_diff_id(images, tar_of):
    layer = tar_of([("x", "1")])
    data = docker_save_archive([layer], {}, ["bad/image:1"])
    config = json.loads(data[data.index(b'{"architecture"'):].split(b"\0", 1)[0])
    forged = data.replace(config["rootfs"]["diff_ids"][0][7:].encode(), b"0" * 64)
    with pytest.raises(InvalidParameter):
        images.load(io.BytesIO(forged))
    with pytest.raises(NotFound):
        images.resolve("bad/image:1")
    assert list(images.layers_dir.iterdir()) == []
    assert list(images.blobs.tmp.iterdir()) == []


def test_whiteouts_and_opaque_dirs_hide_lower_content_under_overlayfs(images, tar_of, in_overlay):
    base = images.resolve("busybox")
    with open(images.blobs.path(base.layers[0]), "rb") as f:
        busybox_layer = f.read()
    layer1 = tar_of([("data", None), ("data/old1", "1"), ("data/old2", "2"), ("keep", "k"), ("gone", "g"),
                     ("sub", None), ("sub/gone-too", "x")])
    layer2 = tar_of([(".wh.gone", ""), ("data", None), ("data/.wh..wh..opq", ""), ("data/new", "n"),
                     ("sub/.wh.gone-too", "")])
    layer3 = tar_of([("data/newer", "nn")], gzipped=True)
    archive = docker_save_archive([busybox_layer, layer1, layer2, gzip.decompress(layer3)],
                                  {"config": {"Cmd": ["sh"]}}, ["whiteout/test:1"])
    images.load(io.BytesIO(archive))
    dirs = images.layer_dirs(images.resolve("whiteout/test:1"))
    assert len(dirs) == 4
    done = in_overlay(dirs, "ls /data | tr '\\n' ' '; echo; cat /keep; echo; ls /gone /sub/gone-too 2>&1 | wc -l")
    assert done.returncode == 0, done.stderr
    listing, keep, missing = done.stdout.splitlines()
    assert listing.split() == ["new", "newer"]
    assert keep == "k"
    assert missing.strip() == "2"  # two "No such file" lines


@pytest.mark.parametrize("entries", [
    [("../evil", "x")],
    [("a/../../evil", "x")],
    [("link", "->", "/tmp"), ("link/evil", "x")],
    [("dir", None), ("dir/link", "->", "../.."), ("dir/link/evil", "x")],
    [("hard", "=>", "../../etc/passwd")],
    [(".wh...", "")],
    [("sub", None), ("sub/.wh..", "")],
])
def test_hostile_layer_cannot_write_outside_the_layer(images, tar_of, tmp_path, entries):
    before = set(os.listdir(tmp_path)), set(os.listdir("/tmp"))
    with pytest.raises(InvalidParameter):
        images.import_tar(io.BytesIO(tar_of(entries)), "evil:1")
    assert (set(os.listdir(tmp_path)), set(os.listdir("/tmp"))) == before
    assert not any(p.name == "evil" for p in tmp_path.rglob("evil"))
    assert list(images.layers_dir.iterdir()) == []
    with pytest.raises(NotFound):
        images.resolve("evil:1")


def test_absolute_names_and_links_stay_inside_the_layer(images, tar_of):
    image = images.import_tar(io.BytesIO(tar_of([("/etc/motd", "hi"), ("abs", "->", "/etc/passwd"),
                                                 ("hl", "=>", "/etc/motd")])), None)
    [layer] = images.layer_dirs(image)
    assert Path(layer, "etc/motd").read_text() == "hi"
    assert os.readlink(Path(layer, "abs")) == "/etc/passwd"
    assert os.stat(Path(layer, "hl")).st_ino == os.stat(Path(layer, "etc/motd")).st_ino
    assert image.repo_tags == [] and images.list()[0].id == image.id


def test_import_with_changes_sets_the_config(images, tar_of):
    data = tar_of([("bin", None), ("bin/tool", "#!/bin/sh\n")], gzipped=True)
    image = images.import_tar(io.BytesIO(data), "imported/tool:2", [
        "ENV PATH=/bin", 'ENV GREETING="hello world" OTHER=1', 'CMD ["tool", "--help"]', "ENTRYPOINT /bin/sh -c",
        "WORKDIR /srv", "USER 65534:65534", "EXPOSE 80 53/udp", 'LABEL a=b "c d"=e', "STOPSIGNAL SIGINT",
    ], "from a tarball")
    assert images.resolve("imported/tool:2").id == image.id
    assert image.config == {
        "Env": ["PATH=/bin", "GREETING=hello world", "OTHER=1"], "Cmd": ["tool", "--help"],
        "Entrypoint": ["/bin/sh", "-c", "/bin/sh -c"], "WorkingDir": "/srv", "User": "65534:65534",
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Labels": {"a": "b", "c d": "e"}, "StopSignal": "SIGINT"}
    assert images.inspect(image.id)["Comment"] == "from a tarball"
    assert images.history(image.id)[0]["Comment"] == "from a tarball"
    with pytest.raises(InvalidParameter, match="RUN is not a valid change command"):
        images.import_tar(io.BytesIO(data), None, ["RUN rm -rf /"])


def test_commit_turns_overlay_whiteouts_back_into_layer_whiteouts(images, make_store, in_overlay, tmp_path):
    base = images.resolve("busybox")
    done = in_overlay(images.layer_dirs(base), "rm /etc/group && rm -rf /var && mkdir /var && echo x > /var/only"
                      " && mkdir -p /srv && echo data > /srv/file", "c1")
    assert done.returncode == 0, done.stderr
    config = commit_config(None, base.config, ["CMD cat /srv/file"])
    image = images.commit(str(tmp_path / "c1/upper"), base, config, "committed:1", "a note", "me")
    assert image.layers[:-1] == base.layers and image.parent == base.id
    assert image.config["Cmd"] == ["/bin/sh", "-c", "cat /srv/file"]
    assert image.raw["author"] == "me" and image.raw["comment"] == "a note"
    with tarfile.open(images.blobs.path(image.layers[-1])) as tf:
        names = set(tf.getnames())
    assert {"etc/.wh.group", "var/.wh..wh..opq", "var/only", "srv/file"} <= names
    # The committed image, saved and loaded into a clean store, shows the same changes.
    saved = io.BytesIO()
    images.save(["committed:1"], saved)
    saved.seek(0)
    clean = make_store("clean")
    assert clean.load(saved) == ["committed:1"]
    done = in_overlay(clean.layer_dirs(clean.resolve("committed:1")),
                      "ls /var; ls /etc/group 2>/dev/null; cat /srv/file", "c2")
    assert done.stdout.split() == ["only", "data"], done.stderr


def test_prune_and_disk_usage(images, tar_of):
    base = images.resolve("busybox")
    dangling = images.import_tar(io.BytesIO(tar_of([("f", "x" * 1000)])), None)
    tagged = images.import_tar(io.BytesIO(tar_of([("g", "y" * 10)])), "keep:1")
    usage = images.disk_usage(lambda image_id: 1 if image_id == base.id else 0)
    assert usage["LayersSize"] == base.size + 1000 + 10
    assert {i["Id"]: i["Containers"] for i in usage["Images"]} == {base.id: 1, dangling.id: 0, tagged.id: 0}
    assert {i["SharedSize"] for i in usage["Images"]} == {0}  # no layer in two of these images
    result = images.prune()
    assert result == {"ImagesDeleted": [{"Deleted": dangling.id}, {"Deleted": dangling.layers[0]}],
                      "SpaceReclaimed": 1000}
    result = images.prune(dangling_only=False, in_use=lambda image_id: image_id == base.id)
    assert result["ImagesDeleted"][0] == {"Untagged": "keep:1"}
    assert [i.id for i in images.list()] == [base.id]
    assert sorted(os.listdir(images.layers_dir)) == [base.layers[0][7:]]
    assert sorted(images.blobs.digests()) == sorted([base.id, base.layers[0]])


def test_unpack_keeps_owners_modes_devices_and_xattrs(images):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        suid = tarfile.TarInfo("bin/suid")
        suid.size, suid.mode, suid.uid, suid.gid = 2, 0o4755, 1000, 1001
        suid.pax_headers = {"SCHILY.xattr.user.note": "hi", "SCHILY.xattr.trusted.overlay.opaque": "y"}
        tf.addfile(suid, io.BytesIO(b"#!"))
        null = tarfile.TarInfo("dev/null")
        null.type, null.devmajor, null.devminor, null.mode = tarfile.CHRTYPE, 1, 3, 0o666
        tf.addfile(null)
        fifo = tarfile.TarInfo("run/fifo")
        fifo.type, fifo.mode = tarfile.FIFOTYPE, 0o600
        tf.addfile(fifo)
        sticky = tarfile.TarInfo("tmp")
        sticky.type, sticky.mode, sticky.mtime = tarfile.DIRTYPE, 0o1777, 1_600_000_000
        tf.addfile(sticky)
    [layer] = images.layer_dirs(images.import_tar(io.BytesIO(buf.getvalue()), None))
    st = os.stat(Path(layer, "bin/suid"))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1001, 0o4755)
    assert os.getxattr(Path(layer, "bin/suid"), "user.note") == b"hi"
    with pytest.raises(OSError):  # a layer may not forge overlayfs metadata
        os.getxattr(Path(layer, "bin/suid"), "trusted.overlay.opaque")
    dev = os.stat(Path(layer, "dev/null"))
    assert (os.major(dev.st_rdev), os.minor(dev.st_rdev), dev.st_mode & 0o777) == (1, 3, 0o666)
    assert stat.S_ISFIFO(os.stat(Path(layer, "run/fifo")).st_mode)
    tmp = os.stat(Path(layer, "tmp"))
    assert (tmp.st_mode & 0o7777, tmp.st_mtime) == (0o1777, 1_600_000_000)


def test_commit_keeps_hard_links_and_skips_sockets(images, tmp_path):
    import socket

    upper = tmp_path / "upper"
    (upper / "data").mkdir(parents=True)
    (upper / "data/a").write_text("shared")
    os.link(upper / "data/a", upper / "data/b")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(upper / "data/sock"))
        image = images.commit(str(upper), images.resolve("busybox"), [], None)
    top = Path(images.layer_dirs(image)[-1])
    assert sorted(os.listdir(top / "data")) == ["a", "b"]
    assert os.stat(top / "data/a").st_ino == os.stat(top / "data/b").st_ino
