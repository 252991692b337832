"""The json-file log on a full or vanished filesystem, and a spawn whose log cannot be opened."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from collections.abc import Iterator

import pytest

from coracle.runtime import monitor as monitor_module
from coracle.runtime.client import MonitorClient, StartError
from coracle.runtime.monitor import JsonLog
from coracle.runtime.spec import Process, Spec

pytestmark = pytest.mark.root  # small filesystems are tmpfs mounts


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, made and removed here."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "coracle-tiny", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_reported_once_and_output_dropped_until_there_is_room(
        tiny_fs: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_module, "LOG_FLOOR", 0)  # only the write's own failure stops it here
    log = JsonLog(str(tiny_fs / "c-json.log"), 0, 1)
    for _ in range(3000):  # ~3 MiB of lines into 1 MiB
        log.write("stdout", b"x" * 1000 + b"\n")
    err = capfd.readouterr().err
    assert err.count("cannot write the log") == 1 and "No space left" in err
    monkeypatch.setattr(monitor_module, "LOG_LOOK_EVERY", 0.0)
    monkeypatch.setattr(monitor_module, "LOG_RESUME_FREE", 256 << 10)
    os.truncate(tiny_fs / "c-json.log", 0)  # room again
    log.write("stdout", b"back\n")
    log.close()
    assert b'"back\\n"' in (tiny_fs / "c-json.log").read_bytes()
    assert "writing again" in capfd.readouterr().err


def test_a_log_stops_short_of_filling_its_filesystem(tiny_fs: Path, capfd: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_module, "LOG_FLOOR", 512 << 10)
    monkeypatch.setattr(monitor_module, "LOG_LOOK_BYTES", 16 << 10)
    log = JsonLog(str(tiny_fs / "c-json.log"), 0, 1)
    for _ in range(3000):
        log.write("stdout", b"x" * 1000 + b"\n")
    log.close()
    st = os.statvfs(tiny_fs)
    assert st.f_bavail * st.f_frsize > 256 << 10  # room is left for others
    err = capfd.readouterr().err
    assert err.count("cannot write the log") == 1 and "free on its filesystem" in err


def test_a_deleted_log_file_is_opened_again_at_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_module, "LOG_LOOK_EVERY", 0.0)
    path = tmp_path / "c-json.log"
    log = JsonLog(str(path), 0, 1)
    log.write("stdout", b"one\n")
    path.unlink()
    log.write("stdout", b"two\n")
    log.close()
    assert b"two" in path.read_bytes()


def test_a_spawn_whose_log_cannot_be_opened_forks_nothing_and_keeps_no_descriptor(tmp_path: Path) -> None:
    client = MonitorClient(str(tmp_path / "exec"))
    pid = client.ensure_running()
    def settled_fds() -> int:
        """The monitor's descriptor count once no request is in flight (a closing connection is transient)."""
        client.ping()
        counts = [len(os.listdir(f"/proc/{pid}/fd"))]
        while len(counts) < 3 or len(set(counts[-3:])) > 1:
            time.sleep(0.05)
            counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        return counts[-1]

    try:
        fds = settled_fds()
        spec = Spec(id="nolog", process=Process(args=["true"]), log_path=str(tmp_path / "gone" / "c-json.log"))
        for _ in range(3):
            with pytest.raises(StartError, match="No such file"):
                client.spawn(spec)
        spare = (client.ping() or {})["spare"]  # the child forked ahead of the next spawn, still unused
        assert Path(f"/proc/{pid}/task/{pid}/children").read_text().split() == [str(spare)]
        assert settled_fds() <= fds
    finally:
        for supervisor in (client.keeper_pid(), pid):  # the keeper first: it restarts the monitor
            if supervisor:
                os.kill(supervisor, signal.SIGKILL)
