"""The image store: the built-in busybox, lookup by every kind of reference, tag and rmi."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from coracle.errors import Conflict, InvalidParameter, NotFound


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_builtin_busybox_resolves_by_every_name(images):
    image = images.resolve("busybox")
    assert image.repo_tags == ["busybox:latest"]
    for ref in ("busybox:latest", "docker.io/library/busybox", "library/busybox:latest",
                image.id, image.id.removeprefix("sha256:"), image.id[7:10], image.id[7]):
        assert images.resolve(ref).id == image.id
    assert image.config["Cmd"] == ["sh"]
    assert image.config["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert len(images.list()) == 1


def test_unknown_image_is_not_found_with_docker_message(images):
    with pytest.raises(NotFound, match="^No such image: busybox:foo$"):
        images.resolve("busybox:foo")
    with pytest.raises(NotFound):
        images.resolve("sha256:" + "0" * 64)
    with pytest.raises(InvalidParameter):
        images.tag("busybox", "Bad Name")
    assert images.list() == [] or [i.repo_tags for i in images.list()] == [["busybox:latest"]]


def test_builtin_is_content_addressed_and_stable(images, make_store, tmp_path):
    image = images.resolve("busybox")
    config = images.blobs.path(image.id)
    assert sha(config) == image.id
    raw = json.loads(config.read_bytes())
    assert raw["rootfs"] == {"type": "layers", "diff_ids": image.layers}
    layer_blob = images.blobs.path(image.layers[0])
    assert sha(layer_blob) == image.layers[0]
    assert make_store("other").resolve("busybox").id == image.id


def test_builtin_layer_has_a_usable_root(images):
    [layer] = images.layer_dirs(images.resolve("busybox"))
    root = Path(layer)
    assert (root / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    for mount_point in ("proc", "sys", "dev", "root", "home", "var"):
        assert (root / mount_point).is_dir()
    assert "nobody:x:65534:65534:" in (root / "etc/passwd").read_text()


def test_builtin_runs_under_overlayfs(images, in_overlay):
    lower = images.layer_dirs(images.resolve("busybox"))
    done = in_overlay(lower, "echo hello from $(id -un); id -u nobody; ls /usr/bin/awk")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello", "from", "root", "65534", "/usr/bin/awk"]


def test_tag_untag_and_remove_frees_the_layer(images):
    image = images.resolve("busybox")
    images.tag("busybox", "localhost:5000/mine", "1")
    assert images.resolve("localhost:5000/mine:1").id == image.id
    assert sorted(images.resolve(image.id).repo_tags) == ["busybox:latest", "localhost:5000/mine:1"]
    with pytest.raises(Conflict, match="referenced in multiple repositories"):
        images.remove(image.id)
    assert images.remove("localhost:5000/mine:1") == [{"Untagged": "localhost:5000/mine:1"}]
    layer = Path(images.layer_dirs(image)[0])
    result = images.remove("busybox")
    assert result == [{"Untagged": "busybox:latest"}, {"Deleted": image.id}, {"Deleted": image.layers[0]}]
    assert not layer.exists()
    assert not images.blobs.has(image.id) and not images.blobs.has(image.layers[0])
    assert images.list() == []
    with pytest.raises(NotFound):
        images.remove(image.id)


def test_remove_refuses_an_image_in_use_unless_forced(images):
    image = images.resolve("busybox")
    in_use = lambda image_id: image_id == image.id  # noqa: E731
    with pytest.raises(Conflict, match="must force"):
        images.remove("busybox", in_use=in_use)
    assert images.resolve("busybox:latest").id == image.id
    assert images.remove("busybox", force=True, in_use=in_use) == [{"Untagged": "busybox:latest"}]
    kept = images.resolve(image.id)
    assert kept.repo_tags == [] and all(Path(d).is_dir() for d in images.layer_dirs(kept))


def test_missing_layer_dir_is_unpacked_again(images):
    image = images.resolve("busybox")
    [layer] = images.layer_dirs(image)
    os.rename(layer, layer + ".moved")
    try:
        assert images.layer_dirs(image) == [layer]
        assert Path(layer, "bin/busybox").is_file()
    finally:
        import shutil
        shutil.rmtree(layer + ".moved")
