"""The context check used where Python lacks tarfile's extraction filters (Debian 12's 3.11.2)."""

from __future__ import annotations

import tarfile

import pytest

from coracle.build.context import _checked_by_hand
from coracle.errors import InvalidParameter


def link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize("target", ["/etc", "../x", "c/..", "a/../../b"])
def test_link_targets_that_could_leave_the_context_are_refused(target: str) -> None:
    """`c/..` stays inside when read as text, but with `c` a symlink to "." the kernel lands above the root."""
    with pytest.raises(InvalidParameter, match="leaves the context"):
        _checked_by_hand(link("d", target))


def test_names_leaving_the_context_are_refused_and_inside_links_kept() -> None:
    with pytest.raises(InvalidParameter, match="leaves the context"):
        _checked_by_hand(tarfile.TarInfo("../escape"))
    kept = _checked_by_hand(link("dir/l", "sub/file"))
    assert (kept.name, kept.linkname, kept.uid) == ("dir/l", "sub/file", 0)
