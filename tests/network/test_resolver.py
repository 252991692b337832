"""The embedded resolver keeps answering right while containers come, go, rename and (dis)connect.

It caches packed answers, so every test first asks the same question twice (the
second answer comes from the cache), then changes something, then asks again.
Names it does not know go to a fake upstream on the LAN peer, which says NXDOMAIN.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from dnslib import RCODE, DNSRecord

from coracle.netns import netns as enter
from networld import FakeUpstream, World, answers, dns_query


@pytest.fixture
def upstream(world: World) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(world.outside)
    try:
        yield fake
    finally:
        fake.close()


def asked_twice(ns: str, name: str, qtype: str = "A") -> list[str]:
    """The answer, after checking that the cached (second) answer is the same as the first."""
    first = dns_query(ns, name, qtype)
    second = dns_query(ns, name, qtype)
    assert (answers(first), first.header.rcode) == (answers(second), second.header.rcode)
    return answers(second) if second.header.rcode == RCODE.NOERROR else [RCODE.get(second.header.rcode)]


def test_a_new_container_is_found_and_a_stopped_one_forgotten(world, upstream):
    world.net.create("app")
    a = world.container("app")
    assert asked_twice(a.ns, "later") == ["NXDOMAIN"]
    b = world.container("app", endpoints={"app": {"Aliases": ["later"]}})
    assert asked_twice(a.ns, "later") == [b.ip("app")]
    assert asked_twice(a.ns, b.name) == [b.ip("app")]
    world.stop(b)
    assert asked_twice(a.ns, "later") == ["NXDOMAIN"]
    assert asked_twice(a.ns, b.name) == ["NXDOMAIN"]
    c = world.container("app", endpoints={"app": {"Aliases": ["later"]}})  # same name, another address
    assert asked_twice(a.ns, "later") == [c.ip("app")]


def test_a_renamed_container_answers_to_its_new_name_only(world, upstream):
    world.net.create("app")
    a, b = world.container("app"), world.container("app")
    ptr = ".".join(reversed(b.ip("app").split("."))) + ".in-addr.arpa"
    assert asked_twice(a.ns, b.name) == [b.ip("app")]
    assert asked_twice(a.ns, ptr, "PTR") == [f"{b.name}.app."]
    old, new = b.name, world.unique("renamed")
    b.rec["Name"] = "/" + new
    world.rename(b.rec, "/" + old)
    assert asked_twice(a.ns, new) == [b.ip("app")]
    assert asked_twice(a.ns, old) == ["NXDOMAIN"]
    assert asked_twice(a.ns, ptr, "PTR") == [f"{new}.app."]
    assert b.rec["NetworkSettings"]["Networks"]["app"]["DNSNames"][0] == new
    assert asked_twice(a.ns, b.id[:12]) == [b.ip("app")]  # the other names stay


def test_connect_and_disconnect_change_who_is_seen_and_by_which_alias(world, upstream):
    world.net.create("front")
    world.net.create("back")
    a, b = world.container("front"), world.container("back")
    assert asked_twice(a.ns, b.name) == ["NXDOMAIN"]  # no shared network
    b.rec["NetworkSettings"] = world.connect(b.rec, b.pid, "front", {"Aliases": ["api"]})
    assert asked_twice(a.ns, "api") == [b.rec["NetworkSettings"]["Networks"]["front"]["IPAddress"]]
    assert asked_twice(a.ns, b.name) == [b.rec["NetworkSettings"]["Networks"]["front"]["IPAddress"]]
    b.rec["NetworkSettings"] = world.disconnect(b.rec, "front")
    assert asked_twice(a.ns, "api") == ["NXDOMAIN"]
    b.rec["NetworkSettings"] = world.connect(b.rec, b.pid, "front", {"Aliases": ["gateway"]})
    assert asked_twice(a.ns, "api") == ["NXDOMAIN"]  # the old alias does not come back
    assert asked_twice(a.ns, "gateway") == [b.rec["NetworkSettings"]["Networks"]["front"]["IPAddress"]]
    # the asking side connects too: it now sees b's back address as well, in the order b joined them
    a.rec["NetworkSettings"] = world.connect(a.rec, a.pid, "back", {})
    assert asked_twice(a.ns, b.name) == [b.ip("back"), b.rec["NetworkSettings"]["Networks"]["front"]["IPAddress"]]
    a.rec["NetworkSettings"] = world.disconnect(a.rec, "back")
    assert asked_twice(a.ns, b.name) == [b.rec["NetworkSettings"]["Networks"]["front"]["IPAddress"]]


def test_a_container_only_on_internal_networks_gets_nothing_from_outside(world, upstream):
    # The resolver forwards from the host's namespace: for a container on internal networks only, that
    # would carry its questions (and whatever they encode) out of a network without a way out.
    world.net.create("sealed", internal=True)
    world.net.create("open")
    a, b = world.container("sealed"), world.container("sealed")
    assert asked_twice(a.ns, "ext.example.test") == ["SERVFAIL"]
    assert upstream.asked == []
    assert asked_twice(a.ns, b.name) == [b.ip("sealed")]  # its own network's names still answer
    # connected to a network with a gateway it has a way out, and its questions go out again
    a.rec["NetworkSettings"] = world.connect(a.rec, a.pid, "open", {})
    assert asked_twice(a.ns, "ext.example.test") == ["203.0.113.7"]
    assert upstream.asked == ["ext.example.test."] * 2
    a.rec["NetworkSettings"] = world.disconnect(a.rec, "open")
    assert asked_twice(a.ns, "ext.example.test") == ["SERVFAIL"]
    assert len(upstream.asked) == 2


def test_each_answer_carries_its_query_id_and_junk_gets_none(world):
    world.net.create("app")
    a, b = world.container("app"), world.container("app")
    with enter(a.ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.11", 53))
        sock.send(b"\x00\x01 not a DNS message")
        for qid in (7, 7, 4242, 65535):  # the second and later come from the cache
            query = DNSRecord.question(b.name, "A")
            query.header.id = qid
            sock.send(query.pack())
            reply = DNSRecord.parse(sock.recv(4096))
            assert (reply.header.id, answers(reply)) == (qid, [b.ip("app")])


def test_queries_pipelined_on_one_tcp_connection_are_all_answered(world):
    world.net.create("app")
    a, b = world.container("app", hostname="alpha"), world.container("app")
    packets = [DNSRecord.question(name, "A").pack() for name in (b.name, "alpha", b.name)]
    with enter(a.ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.11", 53))
        sock.sendall(b"".join(len(p).to_bytes(2, "big") + p for p in packets))
        stream = sock.makefile("rb")
        got = []
        for _ in packets:
            size = int.from_bytes(stream.read(2), "big")
            got.append(answers(DNSRecord.parse(stream.read(size))))
    assert got == [[b.ip("app")], [a.ip("app")], [b.ip("app")]]


def test_names_come_back_when_the_resolver_process_dies(world):
    world.net.create("app")
    a, b = world.container("app"), world.container("app")
    assert asked_twice(a.ns, b.name) == [b.ip("app")]
    resolvers = [pid for pid in _children() if b"coracle.network.dns" in _cmdline(pid)]
    assert len(resolvers) == 1
    os.kill(resolvers[0], signal.SIGKILL)
    reply = None
    for _ in range(400):  # a new process takes over the sockets; until then the port is closed
        try:
            reply = dns_query(a.ns, b.name)
            break
        except OSError:
            time.sleep(0.05)
    assert reply is not None and answers(reply) == [b.ip("app")]
    c = world.container("app")  # and it follows changes again
    assert asked_twice(a.ns, c.name) == [c.ip("app")]


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
