"""Remapped containers at the runtime level: root inside, an unprivileged id outside."""

from __future__ import annotations

import os
from pathlib import Path

from userns_support import ROOT_ID, RemappedContainers


def test_files_created_by_container_root_are_owned_by_the_mapped_id(remapped: RemappedContainers) -> None:
    r = remapped.run(["sh", "-c", "id -u; id -g; echo hi > /created; mkdir /made; touch /tmp/t; ls -ln /etc/passwd"])
    assert r.exit_code == 0, r.output
    lines = r.output.split("\n")
    assert lines[:2] == ["0", "0"]  # root inside...
    assert " 0 " in lines[2], r.output  # ...and the image's root-owned files look root-owned
    upper = Path(r.spec.upper)
    for name in ("created", "made", "tmp/t"):
        st = os.stat(upper / name)
        assert (st.st_uid, st.st_gid) == (ROOT_ID, ROOT_ID), name  # ...an unprivileged id outside
    assert os.stat(Path(remapped.lower) / "etc" / "passwd").st_uid == 0  # the layer itself is untouched
