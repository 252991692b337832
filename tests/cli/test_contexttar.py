"""`coracle build` writes its context tar itself: what it sends is a tar any reader (and the
daemon's checked unpack) takes, with names, modes, link targets and contents intact."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

from coracle.build.context import unpack
from coracle.cli import contexttar
from coracle.cli.commands.build import _context_entries


def sent(root: Path, dockerfile: bytes | None = None, name: str = "Dockerfile") -> bytes:
    return b"".join(contexttar.stream(_context_entries(str(root), dockerfile, name)))


def test_files_directories_links_and_long_names_arrive_intact(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    deep = ctx / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM busybox\n")
    (ctx / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(ctx / "run.sh", 0o4755)
    (deep / "données.txt").write_bytes(b"x" * 1000)
    (ctx / "big.bin").write_bytes(os.urandom(contexttar.CHUNK + 513))
    os.symlink("run.sh", ctx / "link")
    os.symlink("d" * 60 + "/" + "e" * 60 + "/" + "données.txt", ctx / "far")

    with tarfile.open(fileobj=io.BytesIO(sent(ctx)), mode="r:") as tar:
        members = {m.name: m for m in tar}
        long_name = f"{'d' * 60}/{'e' * 60}/données.txt"
        assert members[long_name].size == 1000 and tar.extractfile(members[long_name]).read() == b"x" * 1000  # type: ignore[union-attr]  # a regular file
        assert tar.extractfile(members["big.bin"]).read() == (ctx / "big.bin").read_bytes()  # type: ignore[union-attr]  # a regular file
        assert members["run.sh"].mode == 0o4755
        assert members["link"].issym() and members["link"].linkname == "run.sh"
        assert members["far"].linkname.endswith("/données.txt")
        assert members["d" * 60].isdir()

    out = tmp_path / "unpacked"
    out.mkdir()
    unpack(io.BytesIO(sent(ctx)), str(out))
    assert (out / long_name).read_bytes() == b"x" * 1000
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o4755
    assert os.readlink(out / "link") == "run.sh"


def test_ignored_paths_stay_home_and_an_outside_dockerfile_is_added(tmp_path: Path) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "a.txt").write_text("a\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k\n")
    (tmp_path / "secret" / "public.pem").write_text("p\n")
    (tmp_path / ".dockerignore").write_text("secret\n!secret/public.pem\n")
    with tarfile.open(fileobj=io.BytesIO(sent(tmp_path, b"FROM scratch\n", ".dockerfile.x")), mode="r:") as tar:
        names = set(tar.getnames())
        assert tar.extractfile(".dockerfile.x").read() == b"FROM scratch\n"  # type: ignore[union-attr]  # a regular file
    assert {"keep", "keep/a.txt", ".dockerignore", "secret/public.pem"} <= names
    assert "secret/key" not in names
