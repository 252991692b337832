"""Reading a container's log (written by the monitor, json-file or local format) for `docker logs`."""

from __future__ import annotations

import os
from collections import deque
from typing import Any
from datetime import datetime
from collections.abc import Iterator
from urllib.parse import quote_plus

from coracle.engine.container import Container
from coracle.runtime import logformat


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


def _stamp(entry: dict[str, Any]) -> float:
    t = entry["time"]
    return datetime.fromisoformat(t[:26].rstrip("Z") + "+00:00").timestamp()


def details(entry: dict[str, Any]) -> bytes:
    """`docker logs --details`: the line's attrs as Docker prints them before it, sorted by
    key, each `key=value` query-escaped, joined by commas (empty when there are none)."""
    attrs = entry.get("attrs") or {}
    return ",".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}"
                    for k, v in sorted(attrs.items())).encode()


def source(container: Container) -> tuple[str, str]:
    """A container's log file (Docker shows only json-file's as LogPath) and its format."""
    return container.log_file, container.host_config.log_driver


def files(path: str) -> list[str]:
    """The rotated files (gzipped or not) oldest first, then the live one."""
    rotated = []
    i = 1
    while found := [n for n in (f"{path}.{i}", f"{path}.{i}.gz") if os.path.exists(n)]:
        rotated.append(found[0])
        i += 1
    return list(reversed(rotated)) + ([path] if os.path.exists(path) else [])


def read(path: str, *, driver: str = "json-file", stdout: bool = True, stderr: bool = True,
         since: float | None = None, until: float | None = None,
         tail: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Entries matching the filters, and the offset in the live file to follow from."""
    wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
    entries: deque[dict[str, Any]] | list[dict[str, Any]] = deque(maxlen=tail) if tail is not None and tail >= 0 else []
    offset = 0
    for name in files(path):
        with logformat.open_log(name) as f:
            pending, consumed = b"", 0
            while chunk := f.read(1 << 20):
                found, rest = logformat.split(driver, pending + chunk)
                consumed += len(pending) + len(chunk) - len(rest)
                pending = rest
                for entry in found:
                    if entry.get("stream") not in wanted:
                        continue
                    if since is not None or until is not None:
                        ts = _stamp(entry)
                        if (since is not None and ts < since) or (until is not None and ts > until):
                            continue
                    entries.append(entry)
            if name == path:
                offset = consumed
    return list(entries), offset


def follow(path: str, offset: int, driver: str = "json-file") -> Iterator[dict[str, Any] | None]:
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
                    f = open(path, "rb")  # noqa: SIM115 - held across yields, closed on rotation and at the end
                    f.seek(offset)
                except FileNotFoundError:
                    yield None
                    continue
            data = f.read()
            found, pending = logformat.split(driver, pending + data)
            yield from found
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
