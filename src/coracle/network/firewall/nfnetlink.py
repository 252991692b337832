"""Set and map elements written straight to nf_tables: one batch, one transaction.

Why not libnftables for these: before any element command it reads every element of
the table's interval sets (one subnet per network) into its cache, so `network
create` paid 0.3 ms in an empty table and 1.3 ms at 540 networks, and `network rm`
0.4 -> 5.9 ms; publishing a port paid the same. The kernel needs none of that to add
or delete an element. libnftables still makes the table, its sets and its rules (in
`restore`), which is where its parser earns its keep.

The caller gives elements already in the kernel's byte layout (nftables.py knows the
sets' types); this module only frames them. Interval elements follow nft's own
encoding: a single-field interval set holds a start element and an end element
flagged INTERVAL_END (the address after the range), a concatenation with an interval
holds one element with KEY and KEY_END (the last key of the range).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from coracle.network.nlmsg import F_ACK, F_CREATE, NLMSG_ERROR, Socket, attr, nested, raise_error, string

# linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
_NFGENMSG = struct.Struct("=BBH")  # family, version, resource id (big-endian)
_NFNL_SUBSYS_NFTABLES = 10
_BATCH_BEGIN, _BATCH_END = 0x10, 0x11
_NEWSETELEM, _DELSETELEM = 12, 14
_LIST_TABLE, _LIST_SET, _LIST_ELEMENTS, _LIST_ELEM = 1, 2, 3, 1
_ELEM_KEY, _ELEM_DATA, _ELEM_FLAGS, _ELEM_KEY_END = 1, 2, 3, 10
_DATA_VALUE = 1
INTERVAL_END = 0x1
_NETLINK_NETFILTER = 12  # linux/netlink.h (not in Python's socket module)
NFPROTO = {"ip": 2, "ip6": 10}


@dataclass(frozen=True)
class Element:
    """One element in the kernel's layout: its key, a range's end key, a map's value, its flags."""

    key: bytes
    key_end: bytes | None = None
    data: bytes | None = None
    flags: int = 0

    def encoded(self) -> bytes:
        out = nested(_ELEM_KEY, attr(_DATA_VALUE, self.key))
        if self.key_end is not None:
            out += nested(_ELEM_KEY_END, attr(_DATA_VALUE, self.key_end))
        if self.data is not None:
            out += nested(_ELEM_DATA, attr(_DATA_VALUE, self.data))
        if self.flags:
            out += attr(_ELEM_FLAGS, struct.pack("!I", self.flags))
        return nested(_LIST_ELEM, out)


@dataclass(frozen=True)
class Change:
    """Elements to add to (or delete from) one set or map of one table."""

    add: bool
    family: str  # "ip" or "ip6"
    table: str
    set: str
    elements: tuple[Element, ...]


class ElementWriter(Socket):
    """An nfnetlink socket in the namespace that was current when it was made."""

    def __init__(self) -> None:
        super().__init__(_NETLINK_NETFILTER)

    def apply(self, changes: list[Change]) -> None:
        """All changes in one batch: the kernel commits them together or none (OSError with its errno)."""
        if not changes:
            return
        begin, message = self._message(_BATCH_BEGIN, 0, _NFGENMSG.pack(0, 0, socket.htons(_NFNL_SUBSYS_NFTABLES)))
        batch = [message]
        waiting = set()
        for change in changes:
            body = (_NFGENMSG.pack(NFPROTO[change.family], 0, 0) + attr(_LIST_TABLE, string(change.table))
                    + attr(_LIST_SET, string(change.set))
                    + nested(_LIST_ELEMENTS, b"".join(e.encoded() for e in change.elements)))
            kind = (_NFNL_SUBSYS_NFTABLES << 8) | (_NEWSETELEM if change.add else _DELSETELEM)
            sequence, message = self._message(kind, F_ACK | (F_CREATE if change.add else 0), body)
            waiting.add(sequence)
            batch.append(message)
        batch.append(self._message(_BATCH_END, 0, _NFGENMSG.pack(0, 0, socket.htons(_NFNL_SUBSYS_NFTABLES)))[1])
        self._sock.send(b"".join(batch))
        failure: OSError | None = None
        for sequence, kind, body in self._answers():  # one answer per message: an ack or its error
            if kind == NLMSG_ERROR and sequence == begin:  # the batch as a whole refused (ENOMEM, malformed)
                raise_error(body)
            if kind != NLMSG_ERROR or sequence not in waiting:
                continue
            waiting.discard(sequence)
            try:
                raise_error(body)
            except OSError as exc:
                failure = failure or exc
            if not waiting:
                break
        if failure is not None:
            raise failure
