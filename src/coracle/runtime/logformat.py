"""The two on-disk log formats, written by the monitor and read by `docker logs`.

json-file: one JSON object per line, {"log", "stream", ["attrs",] "time"}.

local (Docker's `local` driver): each entry a protobuf `LogEntry` (source = 1,
time_nano = 2, line = 3 without its newline, partial = 4) framed by its length
as a big-endian uint32 before and after; rotated files are gzip-compressed
(`container.log.1.gz`) unless `compress=false`. The few protobuf fields are
encoded by hand: no protobuf runtime for four scalars.

Both read into the same entry dicts ({"log", "stream", "time", ["attrs"]}), so
whatever serves `docker logs` does not care which format a container uses.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from coracle.clock import timestamp

LOCAL = "local"
_FRAME = struct.Struct(">I")
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def encode(driver: str, stream: str, data: bytes, ns: int, attrs: dict[str, str]) -> bytes:
    """One entry of `data` (a line with its newline, or a partial one without) as stored."""
    if driver == LOCAL:
        line = data[:-1] if data.endswith(b"\n") else data
        body = (_field_bytes(1, stream.encode()) + _key(2, _VARINT) + _varint(ns) + _field_bytes(3, line)
                + (b"" if data.endswith(b"\n") else _key(4, _VARINT) + b"\x01"))
        return _FRAME.pack(len(body)) + body + _FRAME.pack(len(body))
    entry: dict[str, Any] = {"log": data.decode("utf-8", "replace"), "stream": stream}
    if attrs:
        entry["attrs"] = attrs  # Docker writes them between "stream" and "time"
    entry["time"] = timestamp(ns)
    return json.dumps(entry).encode() + b"\n"


def compress(path: str) -> None:
    """Replace the rotated file `path` by `path`.gz (written aside, then renamed).
    gzip and shutil are imported on first use: the monitor, which imports this
    module, starts without them (and without the bz2/lzma that shutil pulls in)."""
    import gzip
    import shutil

    with open(path, "rb") as src, gzip.open(path + ".gz.tmp", "wb", compresslevel=1) as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.rename(path + ".gz.tmp", path + ".gz")
    os.unlink(path)


def open_log(path: str) -> Any:
    """A log file for reading, decompressed when it is a rotated .gz one."""
    import gzip

    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def split(driver: str, data: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The complete entries at the start of `data`, and the bytes of an unfinished one.
    A damaged entry is skipped (json-file) or ends the file's readable part (local)."""
    entries = []
    if driver != LOCAL:
        *lines, rest = data.split(b"\n")
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries, rest
    at = 0
    while len(data) - at >= 2 * _FRAME.size:
        (size,) = _FRAME.unpack_from(data, at)
        end = at + _FRAME.size + size
        if len(data) < end + _FRAME.size:
            break
        if _FRAME.unpack_from(data, end)[0] != size:
            return entries, b""  # not a frame: nothing after it can be trusted
        entry = _decode(data[at + _FRAME.size:end])
        if entry is not None:
            entries.append(entry)
        at = end + _FRAME.size
    return entries, data[at:]


def _decode(body: bytes) -> dict[str, Any] | None:
    fields: dict[int, Any] = {}
    at = 0
    try:
        while at < len(body):
            key, at = _read_varint(body, at)
            number, kind = key >> 3, key & 7
            if kind == _VARINT:
                fields[number], at = _read_varint(body, at)
            elif kind == _LEN:
                size, at = _read_varint(body, at)
                fields[number], at = body[at:at + size], at + size
            elif kind in (_I64, _I32):
                at += 8 if kind == _I64 else 4
            else:
                return None
    except IndexError:
        return None
    line = bytes(fields.get(3, b"")) + (b"" if fields.get(4) else b"\n")
    return {"log": line.decode("utf-8", "replace"), "stream": bytes(fields.get(1, b"")).decode("utf-8", "replace"),
            "time": timestamp(fields.get(2, 0))}


def _key(number: int, kind: int) -> bytes:
    return _varint(number << 3 | kind)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
