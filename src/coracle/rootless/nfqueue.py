"""A netfilter queue (nfnetlink_queue), spoken over a raw netlink socket.

outbound.py holds each container's SYN here while it connects to the
destination, so that the container's connect() ends the way the outside
answered (refused, unreachable, or through). Only what that
needs: bind one queue, copy the first bytes of each packet, read packets with
their input interface, and give a verdict with a new mark.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_MARK, NFQA_IFINDEX_INDEV, NFQA_PAYLOAD = 1, 2, 3, 5, 10
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_PACKET = 2
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NF_DROP, NF_ACCEPT = 0, 1
COPY = 128  # bytes of each packet: its IP and TCP headers


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _attrs(raw: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, i)
        if length < 4:
            break
        out[kind & 0x7FFF] = raw[i + 4:i + length]
        i += (length + 3) & ~3
    return out


@dataclass
class Packet:
    id: int
    indev: int
    payload: bytes


class Queue:
    """One bound queue of the calling thread's network namespace (CAP_NET_ADMIN there)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, 0))
            self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", COPY, NFQNL_COPY_PACKET)))
        except OSError:
            self.sock.close()
            raise

    def _message(self, kind: int, flags: int, body: bytes) -> bytes:
        head = struct.pack("!BBH", socket.AF_UNSPEC, 0, self.number) + body
        return struct.pack("=IHHII", 16 + len(head), (NFNL_SUBSYS_QUEUE << 8) | kind, NLM_F_REQUEST | flags, 0,
                           0) + head

    def _request(self, kind: int, body: bytes) -> None:
        self.sock.send(self._message(kind, NLM_F_ACK, body))
        reply = self.sock.recv(4096)
        if struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
            code = struct.unpack_from("=i", reply, 16)[0]
            if code:
                raise OSError(-code, f"nfnetlink_queue: {os.strerror(-code)}")

    def packets(self) -> list[Packet]:
        """The packets of one read (blocks until there are some)."""
        raw, found, i = self.sock.recv(1 << 16), [], 0
        while i + 16 <= len(raw):
            length, kind = struct.unpack_from("=IH", raw, i)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                attrs = _attrs(raw[i + 20:i + length])
                if NFQA_PACKET_HDR in attrs and NFQA_PAYLOAD in attrs:
                    indev = attrs.get(NFQA_IFINDEX_INDEV, b"\0\0\0\0")
                    found.append(Packet(struct.unpack_from("!I", attrs[NFQA_PACKET_HDR])[0],
                                        struct.unpack("!I", indev)[0], attrs[NFQA_PAYLOAD]))
            i += (length + 3) & ~3
        return found

    def verdict(self, packet: Packet, accept: bool, mark: int | None = None) -> None:
        """Let the packet go on (with a new mark) or drop it; safe from any thread."""
        body = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet.id))
        if mark is not None:
            body += _attr(NFQA_MARK, struct.pack("!I", mark))
        self.sock.send(self._message(NFQNL_MSG_VERDICT, 0, body))
