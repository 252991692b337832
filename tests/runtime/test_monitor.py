"""The runtime without the daemon: the monitor forks, holds, releases, reaps and streams.

These drive `MonitorClient` directly against a private monitor and a busybox
root filesystem made in a temporary directory, in throwaway namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest

from coracle.runtime.client import MonitorClient, StartError
from coracle.runtime.spec import Process, Spec
from harness import busybox_rootfs

pytestmark = pytest.mark.root  # the monitor forks containers into namespaces


@pytest.fixture(scope="module")
def lower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_rootfs(tmp_path_factory.mktemp("lower"))


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[MonitorClient]:
    client = MonitorClient(str(tmp_path / "exec"))
    client.ensure_running()
    try:
        yield client
    finally:
        stop_supervision(client)


def stop_supervision(client: MonitorClient) -> None:
    """Kill the keeper (so nothing restarts the monitor), the monitor and every process they ran."""
    procs = client.list() if client.ping() else []
    for pid in (client.keeper_pid(), (client.ping() or {}).get("pid")):
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, KeyError):
            os.kill(proc["pid"], signal.SIGKILL)


_counter = iter(range(10**6))


def container(tmp_path: Path, lower: Path, args: list[str], **process: Any) -> Spec:
    n = next(_counter)
    dirs = {k: tmp_path / f"{k}{n}" for k in ("upper", "work", "rootfs")}
    for d in dirs.values():
        d.mkdir()
    return Spec(id=f"c{n}", process=Process(args=args, env=["PATH=/bin"], **process), hostname=f"box{n}",
                rootfs=str(dirs["rootfs"]), lower=[str(lower)], upper=str(dirs["upper"]), work=str(dirs["work"]),
                log_path=str(tmp_path / f"c{n}.log"))


def run(monitor: MonitorClient, spec: Spec, timeout: float = 10) -> dict:
    events = monitor.events()
    sock, _pid = monitor.spawn(spec)
    monitor.release(sock, spec.id)
    for event in events:
        if event["id"] == spec.id:
            return event
    raise AssertionError("no exit event")


def log_text(spec: Spec) -> str:
    return "".join(json.loads(line)["log"] for line in Path(spec.log_path).read_text().splitlines())


def test_container_is_isolated_and_exit_code_is_kept(monitor: MonitorClient, tmp_path: Path, lower: Path) -> None:
    shm = subprocess.run(["ipcmk", "-M", "4096"], capture_output=True, text=True, check=True).stdout.split()[-1]
    marker = tmp_path / "host-only-mount"
    marker.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "hostonly", str(marker)], check=True)
    try:
        spec = container(tmp_path, lower, ["sh", "-c", "hostname; ps -o pid,args; ip -o link; "
                                           "echo shm=$(wc -l < /proc/sysvipc/shm); cat /proc/mounts; exit 7"])
        event = run(monitor, spec)
    finally:
        subprocess.run(["umount", str(marker)], check=False)
        subprocess.run(["ipcrm", "-m", shm], check=False)
    out = log_text(spec)
    lines = out.splitlines()
    assert event["exit_code"] == 7
    assert lines[0] == spec.hostname  # own UTS namespace
    procs = [line.split(None, 1) for line in lines[2:] if line.strip()[:1].isdigit() and ":" not in line]
    assert ["1", "sh -c " + spec.process.args[2]] in [[p[0], p[1]] for p in procs]  # the command is PID 1
    assert all(int(p[0]) < 10 for p in procs)  # only its own processes
    links = [line for line in lines if ": lo:" in line or ": eth" in line]
    assert len(links) == 1 and ": lo:" in links[0]  # own network namespace: only lo
    assert "shm=1" in lines  # header only: the host's SysV segment is invisible
    assert "hostonly" not in out  # the host's mount table is invisible


def test_start_errors_are_reported_with_docker_exit_codes(monitor: MonitorClient, tmp_path: Path, lower: Path) -> None:
    spec = container(tmp_path, lower, ["no-such-binary"])
    sock, _ = monitor.spawn(spec)
    with pytest.raises(StartError) as err:
        monitor.release(sock, spec.id)
    assert err.value.exit_code == 127
    assert 'exec: "no-such-binary": executable file not found in $PATH' in str(err.value)
    spec = container(tmp_path, lower, ["/etc/passwd"])
    sock, _ = monitor.spawn(spec)
    with pytest.raises(StartError) as err:
        monitor.release(sock, spec.id)
    assert err.value.exit_code == 126
    spec = container(tmp_path, lower, ["true"], user="nosuchuser")
    sock, _ = monitor.spawn(spec)
    with pytest.raises(StartError, match="unable to find user nosuchuser"):
        monitor.release(sock, spec.id)


def test_user_and_workdir(monitor: MonitorClient, tmp_path: Path, lower: Path) -> None:
    spec = container(tmp_path, lower, ["sh", "-c", "id -u; pwd"], user="nobody", cwd="/made/by/runtime")
    assert run(monitor, spec)["exit_code"] == 0
    assert log_text(spec).split() == ["65534", "/made/by/runtime"]


def _read_frames(sock: socket.socket) -> dict[int, bytes]:
    out: dict[int, bytes] = {1: b"", 2: b""}
    while (packet := sock.recv(1 << 20))[:1] == b"o":
        stream, size = struct.unpack(">BxxxI", packet[1:9])
        out[stream] += packet[9:9 + size]
    return out


def test_attach_streams_stdin_half_close_and_frames(monitor: MonitorClient, tmp_path: Path, lower: Path) -> None:
    spec = container(tmp_path, lower, ["sh", "-c", "cat; echo done >&2"], stdin=True)
    sock, _ = monitor.spawn(spec)
    stream, tty = monitor.attach(spec.id, stdin=True)
    assert tty is False
    monitor.release(sock, spec.id)
    stream.send(b"dhello\n")
    stream.send(b"c")  # stdin EOF: cat ends, output keeps flowing afterwards
    frames = _read_frames(stream)
    assert frames[1] == b"hello\n"
    assert frames[2] == b"done\n"


def test_tty_gives_a_terminal_and_resizes(monitor: MonitorClient, tmp_path: Path, lower: Path) -> None:
    spec = container(tmp_path, lower, ["sh", "-c", "read x; stty size; tty | grep -q /dev/pts/0 && echo isatty"],
                     stdin=True, tty=True)
    sock, _ = monitor.spawn(spec)
    stream, tty = monitor.attach(spec.id, stdin=True)
    assert tty is True
    monitor.release(sock, spec.id)
    monitor.resize(spec.id, 33, 101)
    stream.send(b"dgo\n")
    out = b""
    while (packet := stream.recv(65536))[:1] == b"o":
        out += packet[1:]
    assert b"33 101" in out and b"isatty" in out


def test_exec_joins_namespaces_and_cgroup(monitor: MonitorClient, tmp_path: Path, lower: Path) -> None:
    spec = container(tmp_path, lower, ["sleep", "60"])
    sock, pid = monitor.spawn(spec)
    monitor.release(sock, spec.id)
    events = monitor.events()
    exec_spec = Spec(id="e-" + spec.id, kind="exec", process=Process(args=["sh", "-c", "hostname; sleep 5"]),
                     target_pid=pid)
    esock, epid = monitor.spawn(exec_spec)
    out_sock, _ = monitor.attach(exec_spec.id, stdin=False)
    monitor.release(esock, exec_spec.id)
    time.sleep(0.2)
    for ns in ("mnt", "uts", "ipc", "pid", "net", "cgroup"):
        assert os.readlink(f"/proc/{epid}/ns/{ns}") == os.readlink(f"/proc/{pid}/ns/{ns}"), ns
    os.kill(epid, signal.SIGKILL)
    frames = _read_frames(out_sock)
    assert frames[1].strip().decode() == spec.hostname
    event = next(e for e in events if e["id"] == exec_spec.id)
    assert event["exit_code"] == 137


def test_exit_is_recorded_while_nobody_listens(monitor: MonitorClient, tmp_path: Path, lower: Path) -> None:
    spec = container(tmp_path, lower, ["sh", "-c", "exit 42"])
    sock, _ = monitor.spawn(spec)
    monitor.release(sock, spec.id)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = {r["id"]: r for r in monitor.exit_records()}
        if spec.id in records:
            assert records[spec.id]["exit_code"] == 42
            monitor.forget_exit(spec.id)
            return
        time.sleep(0.02)
    raise AssertionError("exit was not recorded")


def test_log_rotation_keeps_max_files(monitor: MonitorClient, tmp_path: Path, lower: Path) -> None:
    spec = container(tmp_path, lower, ["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done"])
    spec.log_max_size = 16 * 1024
    spec.log_max_file = 3
    assert run(monitor, spec)["exit_code"] == 0
    files = sorted(p.name for p in tmp_path.glob(Path(spec.log_path).name + "*"))
    assert len(files) == 3
    assert all(os.path.getsize(tmp_path / f) <= 16 * 1024 + 200 for f in files)
    assert log_text(spec).splitlines()[-1] == "line-2999"


def test_a_burst_of_exits_with_output_keeps_the_monitor_alive(monitor: MonitorClient, tmp_path: Path,
                                                              lower: Path) -> None:
    """Exits and output of many containers land in the same event batches (closed and reused descriptors)."""
    events = monitor.events()
    specs = [container(tmp_path, lower, ["sh", "-c", "echo out; echo err >&2"]) for _ in range(60)]
    for spec in specs:
        sock, _ = monitor.spawn(spec)
        monitor.release(sock, spec.id)
    wanted = {s.id for s in specs}
    seen: dict[str, int] = {}
    for event in events:
        if event["id"] in wanted:
            seen[event["id"]] = event["exit_code"]
        if len(seen) == len(wanted):
            break
    assert set(seen.values()) == {0}
    assert monitor.ping() is not None
    assert all(log_text(s).split() in (["out", "err"], ["err", "out"]) for s in specs)


def test_only_root_and_its_own_user_may_talk_to_the_monitor(monitor: MonitorClient) -> None:
    """Even with the socket's file mode loosened, another user's connection is closed unanswered."""
    os.chmod(monitor.path, 0o666)
    handle = os.open(monitor.path, os.O_PATH)  # reached through this, not through root-only directories
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.settimeout(5)
                sock.connect(f"/proc/self/fd/{handle}")
                sock.send(json.dumps({"op": "list"}).encode())
                answer = sock.recv(1 << 20)
            os.write(write, b"answered" if answer else b"closed")
        except (ConnectionResetError, BrokenPipeError):
            os.write(write, b"closed")
        except OSError as exc:
            os.write(write, f"error {exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.close(handle)
    os.waitpid(child, 0)
    assert os.read(read, 1024) == b"closed"
    os.close(read)
    assert monitor.ping() is not None  # root still is


def test_an_attach_asked_of_a_dying_monitor_is_answered_by_the_next(monitor: MonitorClient, tmp_path: Path,
                                                                    lower: Path) -> None:
    """A monitor killed while our attach waits in its backlog drops it unanswered: the next monitor answers.

    The old monitor is stopped first, so the attach is queued on its listening
    socket (connect succeeds, no answer comes); killing it then resets that
    connection, as a monitor dying under load does between connect and accept.
    """
    spec = container(tmp_path, lower, ["sh", "-c", "while :; do echo tick; sleep 0.1; done"])
    sock, pid = monitor.spawn(spec)
    monitor.release(sock, spec.id)
    old = monitor.ping()["pid"]  # type: ignore[index]  # it answers: the fixture started it
    os.kill(old, signal.SIGSTOP)
    result: list[Any] = []
    asking = threading.Thread(target=lambda: result.append(monitor.attach(spec.id, stdin=False)))
    asking.start()
    try:
        time.sleep(0.5)  # ordering only: let the request reach the stopped monitor's backlog
        os.kill(old, signal.SIGKILL)
        asking.join(30)
        assert result, "the attach was not answered"
        stream, tty = result[0]
        with stream:
            stream.settimeout(10)
            assert not tty and stream.recv(1 << 20).startswith(b"o")  # the new monitor streams its output
        assert monitor.ping()["pid"] != old  # type: ignore[index]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


VOLATILE = re.compile(r"[,=]volatile[ ,]")


def test_a_volatile_rootfs_skips_the_sync_and_runs_again(monitor: MonitorClient, tmp_path: Path,
                                                         lower: Path) -> None:
    """A --rm container's overlay is volatile (no sync of the data root's disk when its PID 1 exits);
    the kernel marks a work dir a volatile overlay used, and the same container starts again."""
    spec = container(tmp_path, lower, ["sh", "-c", "grep ' / ' /proc/mounts; echo kept > /note"])
    spec.volatile = True
    assert run(monitor, spec)["exit_code"] == 0
    assert VOLATILE.search(log_text(spec))  # "volatile", or "fsync=volatile" on newer kernels
    assert (Path(spec.work) / "work" / "incompat" / "volatile").is_dir()  # the mark a second mount must clear
    again = Spec.from_json({**spec.to_json(), "id": spec.id + "-again",
                            "process": {**spec.to_json()["process"], "args": ["cat", "/note"]}})
    again.log_path = str(tmp_path / "again.log")
    assert run(monitor, again)["exit_code"] == 0
    assert log_text(again) == "kept\n"  # the upper dir of the first run, while the host stays up
    durable = container(tmp_path, lower, ["grep", " / ", "/proc/mounts"])
    assert run(monitor, durable)["exit_code"] == 0
    assert not VOLATILE.search(log_text(durable))  # a container that is kept stays synced like Docker's


def test_the_spare_child_starts_the_next_container_confined(monitor: MonitorClient, tmp_path: Path,
                                                            lower: Path) -> None:
    """The monitor keeps one child forked ahead (runtime/init.serve_spare); the next container comes
    from it with its own namespaces, joins the cgroup it is put in before its code runs, and the
    spare holds nothing of the monitor while it waits."""
    assert run(monitor, container(tmp_path, lower, ["true"]))["exit_code"] == 0
    spare = (monitor.ping() or {})["spare"]
    assert spare
    held = sorted(int(fd) for fd in os.listdir(f"/proc/{spare}/fd"))
    assert held[:3] == [0, 1, 2] and len(held) == 4  # stdio and its line to the monitor, nothing else
    assert Path(f"/proc/{spare}/cmdline").read_bytes().strip(b"\0") == b""  # the monitor's argv is blanked
    group = Path(f"/sys/fs/cgroup/pids/coracle-spare-{os.getpid()}")
    group.mkdir()
    try:
        spec = container(tmp_path, lower, ["sh", "-c", "cat /proc/self/cgroup"])
        spec.namespaces = ["mnt", "uts", "ipc", "pid", "net"]  # no cgroup namespace: the path shows
        events = monitor.events()
        sock, pid = monitor.spawn(spec)
        for ns in ("mnt", "uts", "ipc", "pid", "net"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        (group / "cgroup.procs").write_text(str(pid))
        monitor.release(sock, spec.id)
        assert next(e for e in events if e["id"] == spec.id)["exit_code"] == 0
        assert f"pids:/{group.name}" in log_text(spec)
        new_spare = (monitor.ping() or {})["spare"]
        assert new_spare and new_spare != spare  # the old one became this container's parent and ended
    finally:
        group.rmdir()
