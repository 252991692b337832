"""Reading a container's json-file log (written by the monitor) for `docker logs`."""

from __future__ import annotations

import json
import os
from collections import deque
from datetime import datetime
from typing import Iterator
from urllib.parse import quote_plus


def parse_time(value: str | None) -> float | None:
    """Docker's --since/--until: unix seconds (with fraction) or RFC 3339."""
    if not value or value == "0":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        from coracle.errors import InvalidParameter

        raise InvalidParameter(f"invalid value for since/until: {value}") from None


def _stamp(entry: dict) -> float:
    t = entry["time"]
    return datetime.fromisoformat(t[:26].rstrip("Z") + "+00:00").timestamp()


def details(entry: dict) -> bytes:
    """`docker logs --details`: the line's attrs as Docker prints them before it, sorted by
    key, each `key=value` query-escaped, joined by commas (empty when there are none)."""
    attrs = entry.get("attrs") or {}
    return ",".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}"
                    for k, v in sorted(attrs.items())).encode()


def files(path: str) -> list[str]:
    """The rotated files oldest first, then the live one."""
    rotated = []
    i = 1
    while os.path.exists(f"{path}.{i}"):
        rotated.append(f"{path}.{i}")
        i += 1
    return list(reversed(rotated)) + ([path] if os.path.exists(path) else [])


def read(path: str, *, stdout: bool = True, stderr: bool = True, since: float | None = None,
         until: float | None = None, tail: int | None = None) -> tuple[list[dict], int]:
    """Entries matching the filters, and the offset in the live file to follow from."""
    wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
    entries: deque[dict] | list[dict] = deque(maxlen=tail) if tail is not None and tail >= 0 else []
    offset = 0
    for name in files(path):
        with open(name, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("stream") not in wanted:
                    continue
                if since is not None or until is not None:
                    ts = _stamp(entry)
                    if (since is not None and ts < since) or (until is not None and ts > until):
                        continue
                entries.append(entry)
            if name == path:
                offset = f.tell()
    return list(entries), offset


def follow(path: str, offset: int) -> Iterator[dict | None]:
    """New entries from `offset`; yields None when nothing new is there yet (caller decides to wait).

    The file stays open, so an entry written just before the container was removed
    (and its directory with it) is still read; after a rotation the old file is
    drained before the new one is opened.
    """
    f = None
    pending = b""
    try:
        while True:
            if f is None:
                try:
                    f = open(path, "rb")
                    f.seek(offset)
                except FileNotFoundError:
                    yield None
                    continue
            data = f.read()
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
            if not data:
                try:
                    rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    rotated = False  # removed: keep reading what we have open
                if rotated:
                    f.close()
                    f, offset, pending = None, 0, b""
                    continue
                yield None
    finally:
        if f is not None:
            f.close()
