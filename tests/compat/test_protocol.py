"""The Engine API at the wire: version negotiation, the hijack, and requests that are wrong.

A Docker client relies on details below its API calls (status line of the
upgrade, stream framing, half-close); a buggy or hostile client must get a
clear answer and leave the daemon serving everyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time

import pytest

from compat_helpers import Docker, raw
from harness import Daemon, unique


def _head(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


def _get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode()


def test_ping_and_headers(daemon: Daemon) -> None:
    for method in ("GET", "HEAD"):
        status, headers, body = _head(raw(daemon, _get("/_ping", method)))
        assert status == "HTTP/1.1 200 OK"
        assert headers["ostype"] == "linux" and headers["api-version"] >= "1.45"
        assert headers["server"].startswith("Docker/") and "(linux)" in headers["server"]
        assert body == (b"OK" if method == "GET" else b"")


@pytest.mark.parametrize("version", ["1.24", "1.30", "1.41", "1.43", "1.44", "1.45"])
def test_versioned_paths_are_served(daemon: Daemon, version: str) -> None:
    status, headers, body = _head(raw(daemon, _get(f"/v{version}/version")))
    assert status.endswith("200 OK")
    assert json.loads(body)["Os"] == "linux"
    status, _, body = _head(raw(daemon, _get(f"/v{version}/containers/json?all=1")))
    assert status.endswith("200 OK") and isinstance(json.loads(body), list)


def test_one_version_everywhere_and_wait_answers_with_error_null(daemon: Daemon, docker: Docker) -> None:
    """Docker reports one server version in `version` and `info`; wait's body carries "Error": null."""
    server = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    assert server == docker("info", "--format", "{{.ServerVersion}}").stdout.strip()
    cid = docker("create", "busybox", "sh", "-c", "exit 4").stdout.strip()
    try:
        docker("start", cid)
        status, body = daemon.api("POST", f"/containers/{cid}/wait")
        assert status == 200 and body == {"StatusCode": 4, "Error": None}
        replay = docker("events", "--since", "0", "--until", str(int(time.time()) + 1), "--filter",
                        f"container={cid}", "--format", "{{.Action}}").stdout.split()
        assert replay[:2] == ["create", "start"] and "die" in replay
    finally:
        docker("rm", "-f", cid)


def test_an_ambiguous_id_prefix_is_refused_with_dockers_message(daemon: Daemon, docker: Docker) -> None:
    ids = [docker("create", "busybox", "true").stdout.strip() for _ in range(17)]  # two share a first digit
    try:
        first = [i[0] for i in ids]
        shared = next(c for c in first if first.count(c) > 1)
        status, body = daemon.api("GET", f"/containers/{shared}/json")
        assert status == 400 and body["message"] == f"multiple IDs found with provided prefix: {shared}"
    finally:
        docker("rm", *ids)


def test_versions_out_of_range_are_refused(daemon: Daemon) -> None:
    status, _, body = _head(raw(daemon, _get("/v1.12/version")))
    assert status.startswith("HTTP/1.1 400") and "too old" in json.loads(body)["message"]
    status, _, body = _head(raw(daemon, _get("/v9.99/version")))
    assert status.startswith("HTTP/1.1 400") and "too new" in json.loads(body)["message"]


def _frames(data: bytes) -> dict[int, bytes]:
    """Demultiplex Docker's 8-byte-header frames; asserts the stream is well formed."""
    out: dict[int, bytes] = {1: b"", 2: b""}
    while data:
        assert len(data) >= 8, f"truncated frame header {data!r}"
        stream, size = struct.unpack(">BxxxI", data[:8])
        assert stream in (1, 2) and len(data) >= 8 + size, f"bad frame {data[:16]!r}"
        out[stream] += data[8:8 + size]
        data = data[8 + size:]
    return out


def _upgrade(daemon: Daemon, path: str, body: bytes = b"") -> tuple[socket.socket, dict[str, str], bytes]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(15)
    s.connect(daemon.sock)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        assert chunk, f"closed before the upgrade: {got!r}"
        got += chunk
    status, headers, rest = _head(got)
    assert status == "HTTP/1.1 101 UPGRADED", status
    return s, headers, rest


def _read_all(s: socket.socket, already: bytes = b"") -> bytes:
    data = already
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_attach_hijack_multiplexed_with_half_close(daemon: Daemon, docker: Docker) -> None:
    """stdin EOF (shutdown of our write side) ends cat; output after it still arrives, framed."""
    name = unique("hj")
    docker("create", "-i", "--name", name, "busybox", "sh", "-c", "cat; echo after-eof; echo to-err >&2")
    s, headers, rest = _upgrade(daemon, f"/v1.45/containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1")
    try:
        assert headers["content-type"] == "application/vnd.docker.multiplexed-stream"
        assert headers["upgrade"] == "tcp"
        docker("start", name)
        s.sendall(b"line one\nline two\n")
        s.shutdown(socket.SHUT_WR)
        streams = _frames(_read_all(s, rest))
    finally:
        s.close()
    assert streams[1] == b"line one\nline two\nafter-eof\n"
    assert streams[2] == b"to-err\n"
    assert docker("wait", name).stdout.strip() == "0"


def test_exec_hijack_tty_is_a_raw_stream(daemon: Daemon, docker: Docker) -> None:
    name = unique("ht")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    _, created = daemon.api("POST", f"/containers/{name}/exec",
                            {"Cmd": ["sh", "-c", "read x; echo got-$x; exit 3"], "Tty": True, "AttachStdin": True,
                             "AttachStdout": True, "AttachStderr": True})
    exec_id = created["Id"]
    s, headers, rest = _upgrade(daemon, f"/exec/{exec_id}/start", json.dumps({"Tty": True}).encode())
    try:
        assert headers["content-type"] == "application/vnd.docker.raw-stream"
        s.sendall(b"abc\r")
        out = _read_all(s, rest)
    finally:
        s.close()
    assert b"got-abc\r\n" in out and not out.startswith(b"\x01\x00\x00\x00")  # raw, no frame headers
    deadline = time.monotonic() + 10
    while (info := daemon.api("GET", f"/exec/{exec_id}/json")[1])["Running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert info["ExitCode"] == 3


BAD_BODIES = [
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"Image": 5}', "Image"),
    (b'{"Image": "busybox", "Cmd": 5}', "Cmd"),
    (b'{"Image": "busybox", "Env": {"A": "b"}}', "Env"),
    (b'{"Image": "busybox", "Tty": "yes"}', "Tty"),
    (b'{"Image": "busybox", "Labels": {"a": 1}}', "Labels"),
    (b'{"Image": "busybox", "StopTimeout": "soon"}', "StopTimeout"),
    (b'{"Image": "busybox", "HostConfig": "none"}', "HostConfig"),
    (b'{"Image": "busybox", "HostConfig": {"Memory": "lots"}}', "Memory"),
    (b'{"Image": "busybox", "HostConfig": {"PortBindings": {"80/tcp": "8080"}}}', "PortBindings"),
    (b'{"Image": "busybox", "HostConfig": {"NetworkMode": 5}}', "NetworkMode"),
    (b'{"Image": "busybox", "HostConfig": {"Devices": [{"PathOnHost": 5}]}}', "PathOnHost"),
    (b'{"Image": "busybox", "NetworkingConfig": {"EndpointsConfig": {"bridge": "x"}}}', "EndpointsConfig"),
]


@pytest.mark.parametrize("body,needle", BAD_BODIES, ids=[n for _, n in BAD_BODIES])
def test_bad_create_bodies_are_400(daemon: Daemon, body: bytes, needle: str) -> None:
    status, answer = daemon.api("POST", "/containers/create", body)
    assert status == 400, answer
    assert needle in answer["message"]


def test_other_bad_parameters_are_400(daemon: Daemon, docker: Docker) -> None:
    name = unique("bp")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    for method, path, body in [
        ("GET", "/containers/json?filters=notjson", None),
        ("GET", "/containers/json?filters=[1]", None),
        ("GET", '/containers/json?filters={"status":["sleepy"]}', None),
        ("GET", '/containers/json?filters={"nope":["x"]}', None),
        ("GET", "/containers/json?limit=many", None),
        ("GET", "/images/json?filters=[1]", None),
        ("GET", "/networks?filters=[1]", None),
        ("GET", "/events?filters=[1]&until=1", None),
        ("POST", f"/containers/{name}/exec", {"Cmd": 5}),
        ("POST", f"/containers/{name}/exec", {"Cmd": ["true"], "Env": "A=b"}),
        ("POST", f"/containers/{name}/wait?condition=sometime", None),
        ("POST", f"/containers/{name}/update", {"Memory": "lots"}),
        ("POST", "/networks/create", {"Name": 5}),
        ("POST", "/networks/create", {"Name": "x", "IPAM": {"Config": [{"Subnet": "bogus"}]}}),
        ("POST", "/networks/bridge/connect", {"Container": ["x"]}),
    ]:
        status, answer = daemon.api(method, path.replace("[", "%5B").replace("]", "%5D"), body)
        assert status == 400, (method, path, answer)
        assert answer["message"], (method, path)


def test_unknown_fields_are_ignored(daemon: Daemon) -> None:
    status, answer = daemon.api("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["true"], "FancyFutureField": {"x": [1, 2]},
        "HostConfig": {"SomethingNew": True, "CpuShares": 512}})
    assert status == 201, answer
    daemon.api("DELETE", f"/containers/{answer['Id']}")


def test_unknown_endpoints_and_methods_are_404(daemon: Daemon) -> None:
    for method, path in [("GET", "/nope"), ("GET", "/v1.45/containers/json/extra/bits"), ("DELETE", "/version"),
                         ("PUT", "/swarm/init"), ("POST", "/plugins")]:
        status, _, body = _head(raw(daemon, _get(path, method)))
        assert status.startswith("HTTP/1.1 404"), (method, path, status)
        assert json.loads(body)["message"]
    code, answer = daemon.api("GET", "/containers/no-such-thing/json")
    assert code == 404 and "No such container" in answer["message"]


def test_garbage_on_the_wire_gets_400(daemon: Daemon) -> None:
    for junk in (b"HELLO\r\n\r\n", b"GET /_ping\r\n\r\n", b"GET /_ping HTTP/1.1\r\nno colon here\r\n\r\n",
                 b"POST /containers/create HTTP/1.1\r\nContent-Length: lots\r\n\r\n"):
        status, _, body = _head(raw(daemon, junk))
        assert status.startswith("HTTP/1.1 400"), (junk, status)
        assert json.loads(body)["message"]
    assert raw(daemon, _get("/_ping")).endswith(b"OK")


def test_huge_bodies_are_refused(daemon: Daemon) -> None:
    huge = b'{"Image": "busybox", "Labels": {"a": "' + b"x" * (20 << 20) + b'"}}'
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(15)
        s.connect(daemon.sock)
        s.sendall(f"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(huge)}\r\n\r\n".encode())
        # the daemon answered and closed before taking it all: that is the point
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(huge)
        answer = s.recv(65536)
    status, _, body = _head(answer)
    assert status.startswith("HTTP/1.1 413"), status
    assert "larger than" in json.loads(body.split(b"\n")[0])["message"]
    big_header = b"GET /_ping HTTP/1.1\r\n" + b"X-Junk: " + b"y" * (200 << 10) + b"\r\n\r\n"
    assert _head(raw(daemon, big_header))[0].startswith("HTTP/1.1 413")
    assert raw(daemon, _get("/_ping")).endswith(b"OK")


def _daemon_fds(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def test_clients_vanishing_mid_stream(daemon: Daemon, docker: Docker) -> None:
    """Followers, event listeners, attaches and half-sent bodies that vanish leave nothing behind."""
    name = unique("gone")
    docker("run", "-d", "-i", "--name", name, "busybox", "sh", "-c", "while true; do echo tick; sleep 0.05; done")
    baseline = _daemon_fds(daemon)
    for _ in range(5):
        for request in (_get(f"/containers/{name}/logs?follow=1&stdout=1"), _get("/events"),
                        _get(f"/containers/{name}/stats"),
                        f"POST /containers/{name}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
                        "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode(),
                        b"POST /containers/create HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"Ima"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(daemon.sock)
                s.sendall(request)
                if not request.endswith(b"{\"Ima"):
                    s.recv(4096)  # the stream has begun
    assert docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
    assert docker("logs", "--tail", "1", name).stdout == "tick\n"
    deadline = time.monotonic() + 10
    while _daemon_fds(daemon) > baseline + 3:  # every one of those 25 connections was let go
        assert time.monotonic() < deadline, (baseline, _daemon_fds(daemon))
        time.sleep(0.1)


def test_a_container_ignoring_its_stdin_does_not_stall_others(daemon: Daemon, docker: Docker) -> None:
    import subprocess

    from compat_helpers import env_for

    name = unique("ig")
    stuffed = subprocess.Popen(["docker", "run", "-i", "--name", name, "busybox", "sh", "-c", "sleep 8"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env_for(daemon))
    try:
        assert stuffed.stdin is not None
        deadline = time.monotonic() + 10
        while docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip() != "true":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stuffed.stdin.write(b"x" * (1 << 20))  # far more than a pipe holds; sleep never reads it
        stuffed.stdin.flush()
        assert docker("run", "--rm", "busybox", "echo", "not-stalled", timeout=5).stdout == "not-stalled\n"
    finally:
        stuffed.kill()
        stuffed.wait()
