"""A full data root never keeps a user from stopping and removing what filled it.

The data root is a small tmpfs made (and removed) by each test; a container
floods its log into it through the docker CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

from harness import Daemon, fill_filesystem


@pytest.fixture
def small_root(fresh_daemon: Daemon) -> Iterator[Daemon]:
    """fresh_daemon with a 32 MiB tmpfs as its data root."""
    d = fresh_daemon
    d.data_root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "coracle-small", str(d.data_root)], check=True)
    try:
        yield d
    finally:
        d.destroy()
        subprocess.run(["umount", "-l", str(d.data_root)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def wait_for(what: str, done: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.1)


def test_with_the_disk_full_kill_stop_and_rm_work_and_exits_are_recorded(small_root: Daemon) -> None:
    d = small_root
    d.start()
    sleeper = d.docker("run", "-d", "--network", "none", "busybox", "sleep", "300").stdout.strip()
    also = d.docker("run", "-d", "--network", "none", "busybox", "sleep", "300").stdout.strip()
    flood = d.docker("run", "-d", "--network", "none", "busybox", "sh", "-c", "yes 0123456789abcdef").stdout.strip()
    monitor_log = d.exec_root / "monitor" / "monitor.log"
    wait_for("the flood's log stopped", lambda: "cannot write the log" in monitor_log.read_text())
    fill_filesystem(d.data_root / "filler")  # and something else takes the rest: the disk is full
    d.docker("kill", sleeper)  # needs no new space
    state = d.sdk().containers.get(sleeper).attrs["State"]
    assert not state["Running"] and state["ExitCode"] == 137  # the exit during the full disk is recorded
    assert free_bytes(d.data_root) < 16 << 20  # (the disk is still full: the flood runs on)
    assert sleeper in d.docker("container", "prune", "-f").stdout
    d.docker("rm", "-f", also)
    d.docker("stop", "-t", "1", flood)
    d.docker("rm", flood)
    assert not (d.data_root / "containers" / flood).exists()
    (d.data_root / "filler").unlink()
    # the space comes back (the removed directory is emptied by the trash's thread, so not at once)
    wait_for("the space of the removed containers", lambda: free_bytes(d.data_root) > 16 << 20, timeout=30)
    d.docker("tag", "busybox", "after-the-flood")  # and the daemon works as before
    text = monitor_log.read_text()
    assert "Traceback" not in text
    assert text.count("cannot write the log") == 1  # once, not once per chunk of output


def test_container_logs_are_bounded_by_default_and_by_the_daemon_flag(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.extra_args = ["--log-opt", "max-size=256k", "--log-opt", "max-file=2"]
    d.start()
    plain = d.docker("create", "--network", "none", "busybox", "true").stdout.strip()
    config = d.sdk().containers.get(plain).attrs["HostConfig"]["LogConfig"]
    assert config == {"Type": "json-file", "Config": {"max-size": "256k", "max-file": "2"}}
    own = d.docker("create", "--log-opt", "max-size=1m", "busybox", "true").stdout.strip()
    assert d.sdk().containers.get(own).attrs["HostConfig"]["LogConfig"]["Config"]["max-size"] == "1m"
    flood = d.docker("run", "-d", "--network", "none", "busybox", "sh", "-c", "yes 0123456789abcdef").stdout.strip()
    directory = d.data_root / "containers" / flood
    wait_for("the log rotated", lambda: (directory / f"{flood}-json.log.1").exists())
    files = list(directory.glob(f"{flood}-json.log*"))
    assert len(files) <= 2 and all(f.stat().st_size <= 256 << 10 for f in files)
    d.docker("rm", "-f", flood, plain, own)
    d.stop()
    res = subprocess.run([*daemon_command(d), "--log-opt", "max-size=lots"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode != 0 and "invalid size" in res.stderr and "Traceback" not in res.stderr


def daemon_command(d: Daemon) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{d.netns}", sys.executable, "-m", "coracle.daemon",
            "--data-root", str(d.data_root), "--exec-root", str(d.exec_root), "-H", d.host]


def test_an_exit_while_nothing_can_be_saved_is_recorded_once_space_returns(small_root: Daemon) -> None:
    d = small_root
    d.start()
    cid = d.docker("run", "-d", "--network", "none", "busybox", "sleep", "300").stdout.strip()
    pid = d.sdk().containers.get(cid).attrs["State"]["Pid"]
    (d.data_root / "state.reserve").unlink(missing_ok=True)  # the worst case: the reserve is already spent
    filler = d.data_root / "filler"
    fill_filesystem(filler)
    os.kill(pid, 9)  # it dies while no state can be written
    wait_for("the monitor recorded the exit", lambda: (d.exec_root / "monitor" / "exits" / f"{cid}.json").exists()
             or not d.sdk().containers.get(cid).attrs["State"]["Running"])
    filler.unlink()
    wait_for("the exit was recorded", lambda: not d.sdk().containers.get(cid).attrs["State"]["Running"])
    assert d.sdk().containers.get(cid).attrs["State"]["ExitCode"] == 137
    d.docker("rm", cid)
