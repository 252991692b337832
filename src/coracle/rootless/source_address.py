"""Forwarded connections that keep their client's address inside the rootless namespace.

A published port's listener (ports.py) accepts a client on the user's host
side and opens a second socket inside the rootless network namespace, to the
published port there, which the namespace's nftables DNAT takes to the
container. That inner socket is bound to the *client's* address with
IP_TRANSPARENT (the keeper is root of the user namespace that owns the
network namespace, so it holds CAP_NET_ADMIN there and only there), so the
container sees the LAN client's address, not its gateway's, for TCP and UDP.

The container's replies are addressed to the client, which the namespace
would route out through pasta. Two fixed rules bring them back to the inner
socket instead:

    table ip coracle_rootless
      output      meta mark MARK  ct mark set MARK            the inner sockets' packets (SO_MARK)
      prerouting  ct direction reply ct mark MARK  meta mark set REPLY_MARK
    ip rule fwmark REPLY_MARK lookup TABLE;  table TABLE: local 0.0.0.0/0 dev lo

so that a reply of such a connection is delivered locally, un-DNAT'd, and
found by the socket bound to the client's address (the TPROXY "usesrc
clientip" arrangement, with no TPROXY target needed since the socket made the
connection). Loopback clients (the user's own programs on 127.0.0.1) keep a
plain socket: a loopback source cannot leave a loopback interface, so those
connections show the gateway's address (masqueraded as the daemon does for
localhost access).
IPv6 clients are forwarded the same way without their address (IPv4 only).

Everything here runs in the namespaces keeper, in a thread that has entered
the rootless network namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

import nftables
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

MARK = 0xC0AC  # SO_MARK of the inner sockets, copied to their conntrack entries
REPLY_MARK = 0xC0AD  # replies of those entries, routed to the local table
TABLE = 0xC0AC  # routing table holding the one "local" route
TABLE_NAME = "coracle_rootless"
RULE_PRIORITY = 100


def _rules() -> list[dict]:
    t = {"family": "ip", "table": TABLE_NAME}
    mark = {"meta": {"key": "mark"}}
    ctmark = {"ct": {"key": "mark"}}
    return [
        {"add": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"delete": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"add": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"add": {"chain": {**t, "name": "output", "type": "filter", "hook": "output", "prio": -150,
                           "policy": "accept"}}},
        {"add": {"chain": {**t, "name": "prerouting", "type": "filter", "hook": "prerouting", "prio": -150,
                           "policy": "accept"}}},
        {"add": {"rule": {**t, "chain": "output", "expr": [
            {"match": {"op": "==", "left": mark, "right": MARK}},
            {"mangle": {"key": ctmark, "value": MARK}}]}}},
        {"add": {"rule": {**t, "chain": "prerouting", "expr": [
            {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}},
            {"match": {"op": "==", "left": ctmark, "right": MARK}},
            {"mangle": {"key": mark, "value": REPLY_MARK}}]}}},
    ]


def prepare() -> None:
    """Install the reply path in the calling thread's network namespace (idempotent); OSError if refused."""
    nft = nftables.Nftables()
    rc, _, err = nft.json_cmd({"nftables": _rules()})
    if rc:
        raise OSError(f"nftables refused the reply rules: {str(err).strip()}")
    with IPRoute() as ipr:
        try:
            ipr.rule("add", family=socket.AF_INET, fwmark=REPLY_MARK, table=TABLE, priority=RULE_PRIORITY)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise OSError(exc.code, f"the reply rule: {exc}") from None
        try:
            ipr.route("replace", type="local", dst="0.0.0.0/0", scope="host", oif=ipr.link_lookup(ifname="lo")[0],
                      table=TABLE)
        except NetlinkError as exc:
            raise OSError(exc.code, f"the reply route: {exc}") from None


def keeps(client: str) -> bool:
    """Whether a client's address can be carried in: IPv4, and not loopback."""
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        return False
    return addr.version == 4 and not addr.is_loopback


def inner_socket(kind: socket.SocketKind, client: tuple[str, int], keep: bool) -> socket.socket:
    """A socket of the calling thread's namespace that speaks as `client` when `keep` (the reply
    path is in place) and the address allows it."""
    s = socket.socket(socket.AF_INET, kind)
    if keep and keeps(client[0]):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
            s.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
            s.bind(client)
        except OSError:  # e.g. that address and port already taken inside: fall back to a plain socket
            s.close()
            s = socket.socket(socket.AF_INET, kind)
    return s
