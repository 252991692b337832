"""Attacks on the helpers that work on a container's files (cp both ways, commit).

A hostile image (hostile_image.py) plants a fake standard library at the host
interpreter's paths; every trigger that used to make the cp helper print a
traceback or import a module after entering the container (a tree deeper than
Python's recursion limit, `cp -a` for a user whose uid overflows, PAX headers
with a huge uid or mtime) is fired at a running, a stopped and a never-started
container. The payload must never run (no marker in the container, none on
the host), the client gets a clear answer and the daemon keeps working.
Container processes racing symlink swaps during cp and commit must not get a
host file read or written, and an in-flight helper is inspected from the host:
non-dumpable, in the container's namespaces and cgroups, with one capability.
"""

from __future__ import annotations

import gzip
import http.client
import io
import os
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
from hostile_image import CONTAINER_MARKER, DEEP, HUGE_ID, archive

from coracle.errors import Conflict, SystemError_
from coracle.runtime import confined
from coracle.runtime.confined import Confinement
from harness import Daemon, unique

STATES = ["running", "stopped", "never-started"]
HOST_SECRET = b"host-secret-that-must-stay-on-the-host"


def request(daemon: Daemon, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(120)
            self.sock.connect(daemon.sock)

    conn = Conn("localhost")
    conn.request(method, path, body=body, headers={"Content-Type": "application/x-tar"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def tar_of(*members: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
    return buf.getvalue()


def file_member(name: str, **pax: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.size = 1
    m.pax_headers = dict(pax)
    return m


@pytest.fixture(scope="module")
def host_marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helpers") / "host-marker"


@pytest.fixture(scope="module")
def hostile(daemon: Daemon, host_marker: Path) -> Iterator[str]:
    tag = unique("hostile") + ":1"
    status, body = request(daemon, "POST", "/images/load", archive(tag, str(host_marker)))
    assert status == 200 and b"Loaded image" in body, body
    try:
        yield tag
    finally:
        daemon.api("DELETE", f"/images/{tag}?force=1")


class Containers:
    """Containers of the hostile image in a given state; all removed afterwards."""

    def __init__(self, daemon: Daemon, image: str) -> None:
        self.daemon, self.image = daemon, image
        self.made: list[str] = []

    def make(self, state: str, setup: str = "true", user: str = "") -> str:
        command = f"{setup}; touch /tmp/ready; exec sleep 600" if state == "running" else setup
        status, body = self.daemon.api("POST", f"/containers/create?name={unique('hx')}",
                                       {"Image": self.image, "Cmd": ["sh", "-c", command], "User": user})
        assert status == 201, body
        cid = body["Id"]
        self.made.append(cid)
        if state == "never-started":
            return cid
        status, body = self.daemon.api("POST", f"/containers/{cid}/start")
        assert status == 204, body
        if state == "stopped":
            status, body = self.daemon.api("POST", f"/containers/{cid}/wait")
            assert status == 200, body
        else:
            deadline = time.monotonic() + 60
            while request(self.daemon, "HEAD", f"/containers/{cid}/archive?path=/tmp/ready")[0] != 200:
                assert time.monotonic() < deadline, "the container never got ready"
                time.sleep(0.05)
        return cid

    def inspect(self, cid: str) -> dict:
        status, body = self.daemon.api("GET", f"/containers/{cid}/json")
        assert status == 200, body
        return body

    def upper(self, cid: str) -> Path:
        return Path(self.inspect(cid)["GraphDriver"]["Data"]["UpperDir"])

    def close(self) -> None:
        for cid in self.made:
            self.daemon.api("DELETE", f"/containers/{cid}?force=1")


@pytest.fixture
def containers(daemon: Daemon, hostile: str) -> Iterator[Containers]:
    c = Containers(daemon, hostile)
    try:
        yield c
    finally:
        c.close()


def assert_payload_never_ran(containers: Containers, cid: str, host_marker: Path) -> None:
    assert not host_marker.exists(), "container code ran on the host"
    assert not (containers.upper(cid) / CONTAINER_MARKER).exists(), "container code ran in a privileged helper"
    status, _ = request(containers.daemon, "HEAD", f"/containers/{cid}/archive?path=/etc/passwd")
    assert status == 200  # the daemon (and its helpers) still work on this container


@pytest.mark.parametrize("state", STATES)
def test_a_tree_deeper_than_the_recursion_limit_is_copied_out(containers: Containers, host_marker: Path,
                                                            state: str) -> None:
    cid = containers.make(state)
    status, body = request(containers.daemon, "GET", f"/containers/{cid}/archive?path=/deep")
    assert_payload_never_ran(containers, cid, host_marker)
    assert status == 200, body[:300]
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        names = tf.getnames()
    assert "deep/" + "/".join(["d"] * DEEP) in names


@pytest.mark.parametrize("state", STATES)
def test_a_tree_deeper_than_the_recursion_limit_is_copied_in(containers: Containers, host_marker: Path,
                                                           state: str) -> None:
    cid = containers.make(state)
    members = []
    for level in range(1, DEEP + 1):
        m = tarfile.TarInfo("in/" + "/".join(["d"] * level))
        m.type, m.mode = tarfile.DIRTYPE, 0o755
        members.append(m)
    members.append(file_member("in/" + "/".join(["d"] * DEEP) + "/bottom"))
    status, body = request(containers.daemon, "PUT", f"/containers/{cid}/archive?path=/tmp", tar_of(*members))
    assert_payload_never_ran(containers, cid, host_marker)
    assert status == 200, body
    status, _ = request(containers.daemon, "HEAD",
                        f"/containers/{cid}/archive?path=/tmp/in/" + "/".join(["d"] * DEEP) + "/bottom")
    assert status == 200


@pytest.mark.parametrize("state", STATES)
def test_cp_a_for_a_user_whose_uid_overflows_is_refused(containers: Containers, host_marker: Path,
                                                        state: str) -> None:
    # Running or stopped: the container itself (as `evil`) rewrites its passwd; never started: the image's `huge`.
    if state == "never-started":
        cid = containers.make(state, user="huge")
    else:
        cid = containers.make(state, f"echo evil:x:{HUGE_ID}:{HUGE_ID}::/:/bin/sh > /etc/passwd", user="evil")
    status, body = request(containers.daemon, "PUT", f"/containers/{cid}/archive?path=/tmp&copyUIDGID=1",
                           tar_of(file_member("owned.txt")))
    assert_payload_never_ran(containers, cid, host_marker)
    assert status == 400, body
    assert b"out of range" in body


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("pax", [{"uid": str(HUGE_ID)}, {"gid": str(HUGE_ID)}, {"mtime": "1e30"}],
                         ids=["uid", "gid", "mtime"])
def test_pax_headers_out_of_range_are_refused(containers: Containers, host_marker: Path, state: str,
                                              pax: dict[str, str]) -> None:
    cid = containers.make(state)
    status, body = request(containers.daemon, "PUT", f"/containers/{cid}/archive?path=/tmp",
                           tar_of(file_member("pax.txt", **pax)))
    assert_payload_never_ran(containers, cid, host_marker)
    assert status == 400, body
    assert b"invalid archive" in body and b"out of range" in body


def _layer_bytes(daemon: Daemon, image_id: str) -> bytes:
    """Every layer of a saved image, uncompressed, concatenated."""
    status, saved = request(daemon, "GET", f"/images/{image_id}/get")
    assert status == 200
    out = b""
    with tarfile.open(fileobj=io.BytesIO(saved)) as tf:
        for m in tf.getmembers():
            if m.isreg() and m.name.startswith("blobs/"):
                data = tf.extractfile(m).read()  # type: ignore[union-attr]  # a regular file member
                out += gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return out


# /data/x flips between a directory holding f and symlinks to a host directory holding f
# (plain, and through a /proc magic link), a few milliseconds each.
SWAPPER = ("cd /data; while :; do mkdir x; echo s > x/f; usleep 3000; rm -rf x; ln -s {target} x; usleep 3000; "
           "rm x; mkdir x; echo s > x/f; usleep 3000; rm -rf x; ln -s /proc/self/root{target} x; usleep 3000; "
           "rm x; done")


def test_commit_never_reads_the_host_through_a_swapped_directory(containers: Containers, tmp_path: Path) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    (host / "f").write_bytes(HOST_SECRET)
    cid = containers.make("running", f"({SWAPPER.format(target=host)}) & true")
    daemon = containers.daemon
    failed = []
    for attempt in range(25):
        pause = "1" if attempt % 5 == 0 else "0"  # mostly unpaused: the reader must hold on its own
        status, body = daemon.api("POST", f"/commit?container={cid}&pause={pause}")
        if status != 201:
            failed.append(body)
            continue
        image = body["Id"]
        try:
            layers = _layer_bytes(daemon, image)
            assert b"tmp/ready" in layers  # the container's own change is there...
            assert HOST_SECRET not in layers, "a host file went into the image"  # ...and nothing of the host
        finally:
            daemon.api("DELETE", f"/images/{image}?force=1")
    assert failed == []  # a directory changing under the reader is no reason to fail
    assert os.listdir(host) == ["f"] and (host / "f").read_bytes() == HOST_SECRET
    state = containers.inspect(cid)["State"]
    assert state["Running"] and not state["Paused"]  # thawed after each paused commit


def test_cp_never_reads_or_writes_the_host_through_a_swapped_directory(containers: Containers,
                                                                       tmp_path: Path) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    (host / "f").write_bytes(HOST_SECRET)
    cid = containers.make("running", f"({SWAPPER.format(target=host)}) & true")
    daemon = containers.daemon
    upload = tar_of(file_member("planted"))
    for _ in range(20):
        for path in ("/data/x/f", "/data/x", "/data/x/"):
            status, body = request(daemon, "GET", f"/containers/{cid}/archive?path={path}")
            assert HOST_SECRET not in body
        request(daemon, "PUT", f"/containers/{cid}/archive?path=/data/x", upload)
    assert os.listdir(host) == ["f"] and (host / "f").read_bytes() == HOST_SECRET


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _helper_worker(daemon: Daemon) -> int:
    """The PID of the worker of this daemon's cp helper (the helper's child), seen from the host."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if b"coracle.runtime.confined" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    parents[int(entry)] = int(_status(int(entry))["PPid"])
            except (OSError, KeyError):
                continue
    assert daemon.proc is not None
    helpers = [pid for pid, parent in parents.items() if parent == daemon.proc.pid]
    workers = [pid for pid, parent in parents.items() if parent in helpers]
    assert len(helpers) == 1 and len(workers) == 1, parents
    return workers[0]


def test_a_helper_is_confined_like_an_exec(containers: Containers) -> None:
    cid = containers.make("running", "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null")
    container_pid = containers.inspect(cid)["State"]["Pid"]
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(60)
    sock.connect(containers.daemon.sock)
    try:
        sock.sendall(f"GET /containers/{cid}/archive?path=/big HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # in flight: we read no further, the helper waits
        worker = _helper_worker(containers.daemon)
        status = _status(worker)
        dac_override = 1 << 1
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert int(status[field], 16) == dac_override, (field, status[field])
        assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        for ns in ("pid", "mnt", "net", "ipc", "uts", "cgroup"):
            assert os.readlink(f"/proc/{worker}/ns/{ns}") == os.readlink(f"/proc/{container_pid}/ns/{ns}"), ns
        assert Path(f"/proc/{worker}/cgroup").read_text() == Path(f"/proc/{container_pid}/cgroup").read_text()
        inner = status["NSpid"].split()[-1]
        probe = containers.daemon.docker("exec", cid, "sh", "-c",
                                         f"cat /proc/{inner}/environ; readlink /proc/{inner}/exe || echo no-exe; "
                                         f"cat /proc/{inner}/mem; ls /proc/{inner}/root/", check=False)
        assert probe.stderr.count("Permission denied") == 3, probe  # non-dumpable: nothing of it is readable
        assert probe.stdout == "no-exe\n", probe
    finally:
        sock.close()


@pytest.mark.parametrize("state", ["running", "never-started"])
def test_every_entry_type_round_trips(containers: Containers, state: str) -> None:
    """What the fd-relative unpacker writes, the fd-relative reader gives back: types, owners, modes."""
    cid = containers.make(state)
    members = []
    entries: list[tuple[str, bytes, dict[str, Any]]] = [
        ("t", tarfile.DIRTYPE, {}), ("t/suid", tarfile.REGTYPE, {"mode": 0o4755}),
        ("t/link", tarfile.SYMTYPE, {"linkname": "suid"}),
        ("t/hard", tarfile.LNKTYPE, {"linkname": "t/suid"}),
        ("t/fifo", tarfile.FIFOTYPE, {}),
        ("t/null", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3})]
    for name, kind, extra in entries:
        m = tarfile.TarInfo(name)
        m.type, m.uid, m.gid, m.mtime, m.mode = kind, 1000, 1001, 1_600_000_000, extra.pop("mode", 0o640)
        m.size = 1 if kind == tarfile.REGTYPE else 0
        for key, value in extra.items():
            setattr(m, key, value)
        members.append(m)
    status, body = request(containers.daemon, "PUT", f"/containers/{cid}/archive?path=/tmp", tar_of(*members))
    assert status == 200, body
    status, body = request(containers.daemon, "GET", f"/containers/{cid}/archive?path=/tmp/t")
    assert status == 200, body[:300]
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        got = {m.name: m for m in tf.getmembers()}
    assert got["t"].isdir() and got["t/fifo"].isfifo()
    assert got["t/link"].issym() and got["t/link"].linkname == "suid"
    data, link = sorted((got["t/suid"], got["t/hard"]), key=lambda m: m.islnk())  # one inode, two names
    assert data.isreg() and link.islnk() and link.linkname == data.name
    assert (got["t/null"].devmajor, got["t/null"].devminor) == (1, 3) and got["t/null"].ischr()
    assert (data.uid, data.gid, data.mode, data.mtime) == (1000, 1001, 0o4755, 1_600_000_000)


def test_nothing_is_imported_once_inside(containers: Containers, host_marker: Path) -> None:
    """An import after entering would load the container's copy of the module (here a planted
    `antigravity.py` with a coding cookie that pulls in the payload): the helper refuses it."""
    cid = containers.make("running")
    inside = Confinement(writable=False, pid=containers.inspect(cid)["State"]["Pid"])
    with pytest.raises(SystemError_, match="no module may be imported inside a container"):
        # import_module takes the module name itself as its argument, not a dict
        confined.run(inside, "importlib:import_module", "antigravity")  # type: ignore[arg-type]
    assert_payload_never_ran(containers, cid, host_marker)


def test_a_pid_that_is_no_longer_the_container_is_refused(containers: Containers) -> None:
    """A record's PID reused by a host process must not make the helper work on the host's files."""
    host_process = subprocess.Popen(["sleep", "60"])
    cid = containers.make("running")
    pid = containers.inspect(cid)["State"]["Pid"]
    try:
        for stale in (Confinement(writable=True, pid=host_process.pid),  # the host's own namespaces
                      Confinement(writable=True, pid=pid, start_ticks=1)):  # the PID, but not the process started
            with pytest.raises(Conflict, match="not running"):
                confined.run(stale, "coracle.runtime.containerfs:path_stat", {"path": "/etc/passwd", "ref": cid})
    finally:
        host_process.kill()
        host_process.wait()
