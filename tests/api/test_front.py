"""The front process: reads answered beside a stalled or frozen daemon, every other request handed
over with its bytes intact, the same answers as the daemon's, and an API that outlives the front."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness import Daemon, private_daemon, unique

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    with private_daemon(unique("fr")) as daemon:
        yield daemon


@pytest.fixture
def name(d: Daemon) -> Iterator[str]:
    """A container name for the test; whatever carries it is removed afterwards."""
    made = unique("fr")
    yield made
    d.docker("rm", "-f", made, check=False)


def front_pid(d: Daemon) -> int | None:
    assert d.proc is not None
    out = subprocess.run(["pgrep", "-P", str(d.proc.pid), "-f", "coracle.api.front"], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.stdout.split() else None


def wait_for_front(d: Daemon, not_pid: int | None = None) -> int:
    """The pid of a front process (other than `not_pid`) once it answers with the daemon frozen."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pid = front_pid(d)
        if pid is not None and pid != not_pid:
            with frozen(d), contextlib.suppress(OSError):
                if fresh_call(d, "GET", "/_ping", timeout=2)[0] == 200:
                    return pid
        time.sleep(0.05)
    raise AssertionError(f"no front process answers:\n{d.log.read_text()[-2000:]}")


@contextlib.contextmanager
def frozen(d: Daemon) -> Iterator[None]:
    """The daemon stopped in its tracks (SIGSTOP): nothing it would answer is answered until it goes on."""
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)


class Connection:
    """One keep-alive connection to the API, requests written raw, responses read one by one."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status = int(self.file.readline().split()[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        if status == 100 or head_only:
            return status, headers, b""
        return status, headers, self.file.read(int(headers.get("content-length", "0")))

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        self.send(request(method, path, body))
        status, headers, raw = self.response(head_only=method == "HEAD")
        return status, json.loads(raw) if headers.get("content-type") == "application/json" and raw else raw


def request(method: str, path: str, body: Any = None, headers: str = "") -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: docker\r\n{headers}"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


def fresh_call(d: Daemon, method: str, path: str, timeout: float = 30) -> tuple[int, Any]:
    conn = Connection(d.sock, timeout)
    try:
        return conn.call(method, path)
    finally:
        conn.close()


def handed_over(d: Daemon) -> Connection:
    """A connection the daemon serves: its first request was a write (a refused stop)."""
    conn = Connection(d.sock)
    assert conn.call("POST", "/containers/no-such-container/stop")[0] == 404
    return conn


def test_ps_and_inspect_answer_while_the_daemon_is_frozen(d: Daemon, name: str) -> None:
    cid = d.docker("run", "-d", "--name", name, "busybox", "sleep", "300").stdout.strip()
    wait_for_front(d)
    with frozen(d):
        listed = d.docker("ps", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Status}}", timeout=30).stdout
        assert f"{cid} {name} Up" in listed
        assert d.docker("inspect", "-f", "{{.State.Running}} {{.Name}}", name, timeout=30).stdout.split() == \
            ["true", f"/{name}"]
        assert fresh_call(d, "GET", "/_ping")[0] == 200


def test_each_run_is_listed_by_the_next_ps_and_each_rm_is_gone(d: Daemon, name: str) -> None:
    for i in range(5):
        cid = d.docker("run", "-d", "--name", f"{name}{i}", "busybox", "sleep", "300").stdout.strip()
        assert cid in d.docker("ps", "-q", "--no-trunc").stdout.split()
        d.docker("stop", "-t", "0", f"{name}{i}")
        assert d.docker("ps", "-a", "--filter", f"id={cid}", "--format", "{{.State}}").stdout.strip() == "exited"
        d.docker("rm", f"{name}{i}")
        assert cid not in d.docker("ps", "-aq", "--no-trunc").stdout.split()
        assert d.docker("inspect", cid, check=False).returncode == 1


def test_an_exec_is_in_the_next_inspect(d: Daemon, name: str) -> None:
    """ExecIDs live only in the daemon's memory: the front must not answer from the store without them."""
    d.docker("run", "-d", "--name", name, "busybox", "sleep", "300")
    assert d.docker("inspect", "-f", "{{json .ExecIDs}}", name).stdout.strip() == "null"
    d.docker("exec", name, "true")
    ids = json.loads(d.docker("inspect", "-f", "{{json .ExecIDs}}", name).stdout)
    assert len(ids) == 1
    assert d.docker("exec", name, "true").returncode == 0
    assert len(json.loads(d.docker("inspect", "-f", "{{json .ExecIDs}}", name).stdout)) == 2


QUERIES = ["/containers/json", "/containers/json?all=1", "/v1.41/containers/json?all=true&limit=2",
           "/containers/json?latest=1", '/containers/json?all=1&filters={"status":["exited"]}',
           '/containers/json?filters={"label":["tier=front"]}', '/containers/json?all=1&filters={"name":["fr"]}',
           "HEAD /containers/json"]
REFUSED = ['/containers/json?filters={"bogus":["x"]}', "/containers/json?limit=x", "/v1.12/containers/json",
           "/containers/no-such/json"]


def test_the_front_and_the_daemon_answer_alike(d: Daemon, name: str) -> None:
    d.docker("create", "--name", f"{name}c", "-l", "tier=back", "busybox", "true")
    d.docker("run", "--name", f"{name}x", "-l", "tier=front", "busybox", "sh", "-c", "exit 3", check=False)
    cid = d.docker("run", "-d", "--name", name, "-l", "tier=front", "-p", "8080:80", "busybox", "sleep",
                   "300").stdout.strip()
    daemon = handed_over(d)
    try:
        for query in QUERIES + [f"/containers/{ref}/json" for ref in (name, cid, f"{name}x", f"{name}c")]:
            method, _, path = query.rpartition(" ")
            status, theirs = daemon.call(method or "GET", path)
            with frozen(d):  # the daemon cannot answer: the front does, or the call fails
                ours = fresh_call(d, method or "GET", path)
            assert ours[0] == status == 200, path
            assert _without_status(ours[1]) == _without_status(theirs), path
    finally:
        daemon.close()
    for path in REFUSED + [f"/containers/{cid[:12]}/json"]:  # the daemon's to word or resolve
        daemon = handed_over(d)  # some refusals end their connection
        try:
            assert fresh_call(d, "GET", path) == daemon.call("GET", path), path
        finally:
            daemon.close()
    d.docker("rm", "-f", f"{name}c", f"{name}x")


def _without_status(body: Any) -> Any:
    """A listing without its Status texts ("Up 2 seconds" moves with the clock between two calls)."""
    if isinstance(body, list):
        return [{k: v for k, v in row.items() if k != "Status"} for row in body]
    return body


def test_one_connection_mixes_reads_and_writes_with_every_body_intact(d: Daemon, name: str) -> None:
    big = "x" * 300_000  # larger than one socket buffer: the body arrives in many pieces
    conn = Connection(d.sock)
    try:
        assert conn.call("GET", "/_ping")[0] == 200
        assert conn.call("GET", "/containers/json")[0] == 200
        status, created = conn.call("POST", f"/containers/create?name={name}",
                                    {"Image": "busybox", "Cmd": ["true"], "Labels": {"big": big}})
        assert status == 201, created
        status, info = conn.call("GET", f"/containers/{name}/json")
        assert (status, info["Config"]["Labels"]["big"]) == (200, big)
    finally:
        conn.close()


def test_pipelined_requests_after_an_answered_read_reach_the_daemon_whole(d: Daemon, name: str) -> None:
    body = json.dumps({"Image": "busybox", "Cmd": ["true"], "Labels": {"note": "chunked ✓"}}).encode()
    chunked = (f"POST /containers/create?name={name} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    conn = Connection(d.sock)
    try:
        conn.send(request("GET", "/containers/json?all=1") + chunked + request("GET", f"/containers/{name}/json"))
        first, second, third = conn.response(), conn.response(), conn.response()
        assert first[0] == 200 and isinstance(json.loads(first[2]), list)
        assert second[0] == 201, second
        assert third[0] == 200 and json.loads(third[2])["Config"]["Labels"]["note"] == "chunked ✓"
    finally:
        conn.close()


def test_a_body_sent_after_100_continue_reaches_the_daemon(d: Daemon, name: str) -> None:
    data = json.dumps({"Image": "busybox", "Cmd": ["true"]}).encode()
    conn = Connection(d.sock)
    try:
        conn.send(f"POST /containers/create?name={name} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json"
                  f"\r\nContent-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n".encode())
        assert conn.response()[0] == 100
        conn.send(data)
        assert conn.response()[0] == 201
    finally:
        conn.close()
    assert d.docker("inspect", "-f", "{{.Name}}", name).stdout.strip() == f"/{name}"


def test_a_killed_front_does_not_take_the_api_down(d: Daemon, name: str) -> None:
    d.docker("run", "-d", "--name", name, "busybox", "sleep", "300")
    old = wait_for_front(d)
    os.kill(old, signal.SIGKILL)
    assert name in d.docker("ps", "--format", "{{.Names}}").stdout.split()  # the daemon or the new front
    new = wait_for_front(d, not_pid=old)
    assert new != old
    with frozen(d):  # and the new front answers reads alone
        assert name in d.docker("ps", "--format", "{{.Names}}", timeout=30).stdout.split()


def test_reads_answer_while_a_start_stalls(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    release = d.root / "release-start"
    d.start(env={"CORACLE_FAULT": f"stall:start-after-cgroup:{release}"})
    stalled = unique("st")
    status, _ = d.api("POST", f"/containers/create?name={stalled}", {"Image": "busybox", "Cmd": ["sleep", "300"]})
    assert status == 201
    started: list[int] = []
    starter = threading.Thread(target=lambda: started.append(d.api("POST", f"/containers/{stalled}/start")[0]))
    starter.start()
    try:
        deadline = time.monotonic() + 60
        while "stalling at start-after-cgroup" not in d.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.docker("ps", "-a", "--filter", f"name={stalled}", "--format", "{{.State}}").stdout.strip() == \
            "created"
        assert d.docker("inspect", "-f", "{{.State.Status}}", stalled).stdout.strip() == "created"
        other = unique("st")
        d.docker("create", "--name", other, "busybox", "true")  # a write beside the stalled start
        assert other in d.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    finally:
        release.touch()
        starter.join(60)
    assert started == [204]
    assert d.docker("ps", "--filter", f"name={stalled}", "--format", "{{.State}}").stdout.strip() == "running"


def test_a_hung_front_is_replaced_and_the_api_answers_meanwhile(d: Daemon, name: str) -> None:
    """A front stopped in its tracks (alive, accepting nothing) is killed by the daemon's watchdog."""
    d.docker("run", "-d", "--name", name, "busybox", "sleep", "300")
    old = wait_for_front(d)
    os.kill(old, signal.SIGSTOP)
    try:
        # queued in the listening socket until the hung front is replaced (HUNG seconds), then answered
        assert name in d.docker("ps", "--format", "{{.Names}}", timeout=60).stdout.split()
        new = wait_for_front(d, not_pid=old)
        assert new != old
        with frozen(d):
            assert name in d.docker("ps", "--format", "{{.Names}}", timeout=30).stdout.split()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)
