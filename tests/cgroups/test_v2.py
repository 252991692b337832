"""cgroup v2.

MOCK: most tests here run against a temporary directory laid out like a cgroup2
mount (cgroup.controllers, cgroup.subtree_control, memory.max, ...), because
this machine's cgroup2 (at /sys/fs/cgroup/unified) has no controllers. The
`FakeCgroup2` class (tests/fake_cgroup2.py) plays the kernel: it creates the interface files a
real mkdir would create and, for the freezer, reflects cgroup.freeze into
cgroup.events. These tests check the files V2Manager writes and the stats it
parses; they cannot prove a limit bites. `test_real_*` run against a real
cgroup2 with controllers when the host has one and are skipped otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from coracle.cgroups import Resources, V1Manager, V2Manager, detect, list_children
from coracle.errors import InvalidParameter, SystemError_
from fake_cgroup2 import ALL, FakeCgroup2

MB = 1024 * 1024


@pytest.fixture
def fake(tmp_path: Path) -> FakeCgroup2:
    return FakeCgroup2(tmp_path / "cgroup")


@pytest.fixture
def container(fake: FakeCgroup2) -> V2Manager:
    """A container cgroup under an existing parent `coracle`, with every controller."""
    fake.mkcg(fake.root / "coracle", ALL)
    m = V2Manager("coracle/abc", str(fake.root))
    m.create()
    fake.mkcg(fake.root / "coracle/abc", "cpuset cpu io memory pids")
    return m


def text(m: V2Manager, name: str) -> str:
    return Path(m.dirs()[0], name).read_text().strip()


def test_detect_picks_v2_only_for_a_cgroup2_root_with_controllers(fake, tmp_path):
    assert detect(str(fake.root)) is V2Manager
    assert detect("/sys/fs/cgroup") is V1Manager  # this host: v1 hierarchies, empty unified
    with pytest.raises(SystemError_, match="no cgroup filesystem"):
        detect(str(tmp_path / "nothing"))


def test_create_enables_controllers_top_down(fake, container):
    assert Path(container.dirs()[0]).is_dir()
    wanted = "+cpu +cpuset +io +memory +pids"  # hugetlb, rdma, misc are left off
    assert (fake.root / "cgroup.subtree_control").read_text() == wanted
    assert (fake.root / "coracle/cgroup.subtree_control").read_text() == wanted


def test_create_writes_only_controllers_not_yet_enabled(fake):
    (fake.root / "cgroup.subtree_control").write_text("cpu memory")
    fake.mkcg(fake.root / "p", "cpu memory pids")
    V2Manager("p/c", str(fake.root)).create()
    assert (fake.root / "cgroup.subtree_control").read_text() == "+cpuset +io +pids"
    assert (fake.root / "p/cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_set_writes_each_limit_to_its_file(container, caplog):
    with caplog.at_level(logging.WARNING):
        container.set(Resources(memory=64 * MB, memory_reservation=32 * MB, nano_cpus=1_500_000_000,
                                cpu_shares=1024, cpuset_cpus="0", cpuset_mems="0", pids_limit=10,
                                blkio_weight=500, oom_kill_disable=True))
    assert text(container, "memory.max") == str(64 * MB)
    assert text(container, "memory.swap.max") == str(64 * MB)  # Docker: swap = memory
    assert text(container, "memory.low") == str(32 * MB)
    assert text(container, "cpu.max") == "150000 100000"
    assert text(container, "cpu.weight") == "39"
    assert text(container, "cpuset.cpus") == "0"
    assert text(container, "cpuset.mems") == "0"
    assert text(container, "pids.max") == "10"
    assert text(container, "io.weight") == f"default {1 + (500 - 10) * 9999 // 990}"
    assert not V2Manager.oom_kill_disable_supported
    assert "OomKillDisable discarded" in caplog.text


def test_swap_is_memory_plus_swap_minus_memory(container):
    with pytest.raises(InvalidParameter, match="set the Memory limit"):
        container.update(Resources(memory_swap=100 * MB))  # memory.max is still "max"
    container.set(Resources(memory=64 * MB, memory_swap=100 * MB))
    assert text(container, "memory.swap.max") == str(36 * MB)
    container.update(Resources(memory_swap=-1))
    assert text(container, "memory.swap.max") == "max"


def test_update_keeps_what_it_does_not_name(container):
    container.set(Resources(nano_cpus=1_500_000_000, pids_limit=10))
    container.update(Resources(cpu_period=50_000))
    assert text(container, "cpu.max") == "150000 50000"
    container.update(Resources(cpu_quota=-1, pids_limit=-1))
    assert text(container, "cpu.max") == "max 50000"
    assert text(container, "pids.max") == "max"


def test_bfq_weight_is_preferred_when_present(fake):
    fake.mkcg(fake.root / "p", ALL)
    m = V2Manager("p/c", str(fake.root))
    m.create()
    fake.mkcg(fake.root / "p/c", "io", {"io.bfq.weight": "default 100"})
    m.set(Resources(blkio_weight=300))
    assert text(m, "io.bfq.weight") == "300"


def test_missing_controller_is_an_error_only_when_asked_for(fake):
    fake.mkcg(fake.root / "p", ALL)
    m = V2Manager("p/c", str(fake.root))
    m.create()
    fake.mkcg(fake.root / "p/c", "memory")
    (fake.root / "p/c/memory.swap.max").unlink()  # a kernel without swap accounting
    m.set(Resources(memory=64 * MB))  # no pids/cpu asked; no swap accounting: skipped silently
    assert text(m, "memory.max") == str(64 * MB)
    with pytest.raises(InvalidParameter, match="pids cgroup controller is not available"):
        m.set(Resources(pids_limit=10))
    with pytest.raises(InvalidParameter, match="no swap accounting"):
        m.set(Resources(memory=64 * MB, memory_swap=128 * MB))


def test_stats_are_parsed_into_docker_units(container):
    d = Path(container.dirs()[0])
    (d / "memory.current").write_text("1048576\n")
    (d / "memory.peak").write_text("2097152\n")
    (d / "memory.max").write_text(f"{64 * MB}\n")
    (d / "memory.stat").write_text("anon 524288\nfile 4096\n")
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
                                "nr_periods 10\nnr_throttled 3\nthrottled_usec 42\n")
    (d / "pids.current").write_text("4\n")
    (d / "pids.max").write_text("20\n")
    (d / "io.stat").write_text("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    s = container.stats()
    assert s["memory_stats"] == {"usage": MB, "max_usage": 2 * MB, "limit": 64 * MB,
                                 "stats": {"anon": 524288, "file": 4096}}
    assert s["cpu_stats"]["cpu_usage"] == {"total_usage": 1_500_000, "percpu_usage": [],
                                           "usage_in_kernelmode": 500_000, "usage_in_usermode": 1_000_000}
    assert s["cpu_stats"]["throttling_data"] == {"periods": 10, "throttled_periods": 3, "throttled_time": 42_000}
    assert s["cpu_stats"]["online_cpus"] == os.sysconf("SC_NPROCESSORS_ONLN")
    assert s["pids_stats"] == {"current": 4, "limit": 20}
    assert s["blkio_stats"]["io_service_bytes_recursive"] == [
        {"major": 8, "minor": 0, "op": "read", "value": 4096},
        {"major": 8, "minor": 0, "op": "write", "value": 8192},
    ]
    assert [e["value"] for e in s["blkio_stats"]["io_serviced_recursive"]] == [1, 2]


def test_unlimited_memory_reports_the_machine_memory(container):
    limit = container.stats()["memory_stats"]["limit"]
    with open("/proc/meminfo") as f:
        assert limit == int(f.readline().split()[1]) * 1024


def test_oom_killed_reads_memory_events(container):
    assert not container.oom_killed()
    Path(container.dirs()[0], "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    assert container.oom_killed()


def test_freeze_waits_for_the_kernel_to_report_frozen(container):
    d = Path(container.dirs()[0])
    stop = threading.Event()

    def kernel() -> None:  # reflect cgroup.freeze into cgroup.events, a bit later
        while not stop.wait(0.02):
            want = (d / "cgroup.freeze").read_text().strip()
            (d / "cgroup.events").write_text(f"populated 1\nfrozen {want}\n")

    t = threading.Thread(target=kernel)
    t.start()
    try:
        container.freeze()
        assert text(container, "cgroup.freeze") == "1"
        assert "frozen 1" in text(container, "cgroup.events")
        container.thaw()
        assert "frozen 0" in text(container, "cgroup.events")
    finally:
        stop.set()
        t.join()


def test_apply_procs_and_kill_all(container):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        container.apply(sleeper.pid)
        assert text(container, "cgroup.procs") == str(sleeper.pid)
        nested = Path(container.dirs()[0], "inner")
        nested.mkdir()
        (nested / "cgroup.procs").write_text("1\n")
        assert container.procs() == sorted([1, sleeper.pid])
        (nested / "cgroup.procs").write_text("")
        container.kill_all(signal.SIGKILL)  # whole subtree through cgroup.kill
        assert text(container, "cgroup.kill") == "1"
        container.kill_all(signal.SIGTERM)  # others: one by one
        assert sleeper.wait(10) == -signal.SIGTERM
    finally:
        sleeper.kill()
        sleeper.wait()


def test_list_children_on_v2(fake, container):
    assert list_children("coracle", str(fake.root)) == ["coracle/abc"]


# -- real cgroup2 --------------------------------------------------------


def _real_v2_root() -> str | None:
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        try:
            with open(os.path.join(root, "cgroup.controllers")) as f:
                if {"memory", "pids"} <= set(f.read().split()):
                    return root
        except OSError:
            continue
    return None


REAL = _real_v2_root()
real = pytest.mark.skipif(REAL is None, reason="no cgroup2 with controllers on this host")


@real
def test_real_v2_limits_bite(unique):
    assert REAL is not None
    m = V2Manager(f"{unique('coracle-test-')}/{unique('c')}", REAL)
    m.create()
    try:
        m.set(Resources(memory=32 * MB, pids_limit=4))
        code = f"import sys; sys.stdin.readline(); b = [bytearray({MB}) for _ in range(512)]"
        p = subprocess.Popen(["python3", "-c", code], stdin=subprocess.PIPE)
        m.apply(p.pid)
        p.communicate(b"go\n", timeout=30)
        assert p.returncode == -signal.SIGKILL
        assert m.oom_killed()
        assert m.stats()["pids_stats"]["limit"] == 4
    finally:
        m.destroy()
        os.rmdir(os.path.join(REAL, m.path.split("/")[0]))
    assert not m.exists()
