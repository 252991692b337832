"""Images of a rootless daemon: import and pull write layers owned through the user's id mapping."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

import harness
from rootless_support import LAN_PEER, RootlessUser, files_on_host

# makes throwaway users with subordinate ids: the root tier
pytestmark = pytest.mark.root

BY_ROOT, BY_USER = "rl-by-root", "rl-by-1000"  # files of the image owned by 0:0 and by 1000:1000


def _rootfs_tarball(dest: Path) -> None:
    """A root filesystem (busybox, so the image runs) with one file of root and one of uid 1000."""
    rootfs = harness.busybox_rootfs(dest.parent / "rootfs")
    with tarfile.open(dest, "w") as t:
        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            return info

        t.add(rootfs, arcname=".", filter=as_root)
        for name, owner in ((BY_ROOT, 0), (BY_USER, 1000)):
            info = tarfile.TarInfo(name)
            info.uid = info.gid = owner
            info.size = 2
            t.addfile(info, io.BytesIO(b"hi"))
    os.chmod(dest, 0o644)


def _owners_on_host(root: Path, name: str) -> set[tuple[int, int]]:
    return {(st.st_uid, st.st_gid) for st in files_on_host(root, name)}


def test_import_and_pull_map_ownership_through_the_subordinate_ids(bare_user: RootlessUser,
                                                                   tmp_path: Path) -> None:
    user = bare_user
    registry, port = harness.start_registry(user.lan_ns, tmp_path, addr=LAN_PEER)
    try:
        user.start_daemon("--insecure-registry", f"{LAN_PEER}:{port}")
        archive = user.root / "rootfs.tar"
        _rootfs_tarball(archive)
        ref = f"{LAN_PEER}:{port}/rootless/owned:1"
        user.docker("import", str(archive), ref)
        data_root = user.home / ".local/share/coracle"
        mine, subordinate = (user.uid, user.gid), (user.subid + 999, user.subid + 999)

        def check_ownership() -> None:
            # on the host: root's file is the user's, uid 1000's is the 1000th subordinate id
            assert _owners_on_host(data_root, BY_ROOT) == {mine}
            assert _owners_on_host(data_root, BY_USER) == {subordinate}
            # inside: the image's own ids
            out = user.docker("run", "--rm", ref, "stat", "-c", "%u:%g", f"/{BY_ROOT}", f"/{BY_USER}").stdout
            assert out.split() == ["0:0", "1000:1000"]

        check_ownership()
        user.docker("push", ref, timeout=120)
        user.docker("rmi", ref)
        assert not _owners_on_host(data_root, BY_USER)  # the layer went with the image: pull makes it anew
        user.docker("pull", ref, timeout=120)
        check_ownership()
    finally:
        registry.kill()
        registry.wait()
