"""Resolving and assuming a container user (`-u`, image `User`) inside its rootfs.

Names are looked up in the container's own /etc/passwd and /etc/group (after
pivot_root), never the host's, exactly as Docker does.
"""

from __future__ import annotations

import os


def _table(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve(user: str, extra_groups: list[str]) -> tuple[int, int, list[int], str]:
    """`user` ("name", "uid", "uid:gid", "name:group", "") -> uid, gid, supplementary groups, home.

    The groups are Docker's: the primary gid, the groups that list a user named
    without an explicit group, then `--group-add`'s."""
    passwd = _table("/etc/passwd")
    groups = _table("/etc/group")
    name, _, group = (user or "0").partition(":")
    entry = next((p for p in passwd if len(p) >= 7 and (p[0] == name or p[2] == name)), None)
    if entry is not None:
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    elif name.isdigit():
        uid, gid, home = int(name), 0, "/"
    else:
        raise LookupError(f"unable to find user {name}: no matching entries in passwd file")

    def group_id(g: str) -> int:
        row = next((r for r in groups if len(r) >= 3 and (r[0] == g or r[2] == g)), None)
        if row is not None:
            return int(row[2])
        if g.isdigit():
            return int(g)
        raise LookupError(f"unable to find group {g}: no matching entries in group file")

    if group:
        gid = group_id(group)
        member_of = []  # an explicit group replaces the user's memberships, as in Docker
    else:
        member_of = [int(r[2]) for r in groups if len(r) >= 4 and entry is not None and entry[0] in r[3].split(",")]
    # Docker puts the primary group among the supplementary ones too: `id` shows groups=0(root),10(wheel)
    return uid, gid, [gid, *member_of, *(group_id(g) for g in extra_groups)], home


def assume(uid: int, gid: int, groups: list[int]) -> None:
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
