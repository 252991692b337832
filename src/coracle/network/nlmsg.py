"""Netlink messages packed with `struct`: the framing the rtnetlink and nfnetlink conversations share.

Both exist because a library's per-request cost (pyroute2's event loop, libnftables' cache of
every element of a table) grew into milliseconds on paths a user waits on, where the kernel
answers in microseconds. This module is only the wire: headers, attributes, and one socket that
sends a request and reads its answers.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

# linux/netlink.h
HEADER = struct.Struct("=IHHII")          # nlmsghdr: length, type, flags, sequence, port
NLA = struct.Struct("=HH")                # nlattr: length, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_ACK, F_EXCL, F_CREATE, F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLA_F_NESTED = 0x8000
_SOL_NETLINK, _NETLINK_GET_STRICT_CHK = 270, 12


def attr(kind: int, payload: bytes) -> bytes:
    size = NLA.size + len(payload)
    return NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def nested(kind: int, payload: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, payload)


def string(value: str) -> bytes:
    """A string attribute's payload: NUL-terminated."""
    return value.encode() + b"\0"


def attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The top-level attributes of a message body from `offset` (the last of a repeated kind wins)."""
    out = {}
    while offset + NLA.size <= len(data):
        size, kind = NLA.unpack_from(data, offset)
        if size < NLA.size:
            break
        out[kind & 0x3FFF] = data[offset + NLA.size:offset + size]
        offset += (size + 3) & ~3
    return out


def attribute(data: bytes, offset: int, kind: int) -> bytes | None:
    """The first top-level attribute of `kind` from `offset`: a scan that stops there, without the
    dictionary of `attributes` (what a dump of hundreds of messages spends its time on)."""
    while offset + NLA.size <= len(data):
        size, found = NLA.unpack_from(data, offset)
        if size < NLA.size:
            break
        if found & 0x3FFF == kind:
            return data[offset + NLA.size:offset + size]
        offset += (size + 3) & ~3
    return None


class Socket:
    """One netlink socket of `protocol`, in the network namespace current when it was made."""

    def __init__(self, protocol: int, strict: bool = False) -> None:
        """`strict`: the kernel checks dump requests strictly, and filters dumps by what they name."""
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        if strict:
            self._sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        self._sock.bind((0, 0))
        self._sequence = 0

    def close(self) -> None:
        self._sock.close()

    def _message(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        """(sequence, bytes) of one request, not sent yet."""
        self._sequence += 1
        return self._sequence, HEADER.pack(HEADER.size + len(body), kind, F_REQUEST | flags, self._sequence, 0) + body

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        sequence, message = self._message(kind, flags, body)
        self._sock.send(message)
        return sequence

    def _answers(self) -> Iterator[tuple[int, int, bytes]]:
        """(sequence, type, body) of every message the kernel sends, for ever."""
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + HEADER.size <= len(data):
                size, kind, _flags, seq, _port = HEADER.unpack_from(data, offset)
                if size < HEADER.size:  # malformed: never loop on it
                    raise OSError(errno.EPROTO, "truncated netlink message")
                yield seq, kind, data[offset + HEADER.size:offset + size]
                offset += (size + 3) & ~3

    def _replies(self, sequence: int) -> Iterator[tuple[int, bytes]]:
        """(type, body) of each answer to `sequence` up to its end (an ack, an error or a dump's end)."""
        for seq, kind, body in self._answers():
            if seq != sequence:
                continue
            if kind == NLMSG_ERROR:
                raise_error(body)
                return
            if kind == NLMSG_DONE:
                return
            yield kind, body

    def _do(self, kind: int, body: bytes, flags: int = 0) -> None:
        """A request answered by an acknowledgement (or the error that raises)."""
        for _ in self._replies(self._send(kind, F_ACK | flags, body)):
            pass

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        """Every message of a dump request's answer."""
        return [reply for _, reply in self._replies(self._send(kind, F_DUMP, body))]


def raise_error(body: bytes) -> None:
    """Raise the errno of an NLMSG_ERROR body as OSError (0 is an acknowledgement: nothing to raise)."""
    code = -struct.unpack_from("=i", body)[0]
    if code:
        raise OSError(code, os.strerror(code))
