"""cgroup v1 for real: limits are proven by what they do to real processes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from coracle.cgroups import Resources, V1Manager, detect, list_children, manager_for
from coracle.cgroups.resources import MIN_MEMORY
from coracle.errors import InvalidParameter, NotFound

ROOT = "/sys/fs/cgroup"
pytestmark = pytest.mark.skipif(detect(ROOT) is not V1Manager, reason="host does not run cgroup v1")
MB = 1024 * 1024


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def cgroup_lines(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controllers: path}, the kernel's own view."""
    out = {}
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        out[controllers] = path
    return out


def ctl(m: V1Manager, controller: str, name: str) -> str:
    return read(os.path.join(ROOT, controller, m.path, name))


def test_manager_for_gives_v1_here(parent):
    m = manager_for(f"{parent}/x")
    assert isinstance(m, V1Manager)
    assert len(m.dirs()) >= 8 and all(d.endswith(f"/{parent}/x") for d in m.dirs())


def test_create_makes_a_joinable_cgroup_in_every_hierarchy(cgroup, held):
    assert all(os.path.isdir(d) for d in cgroup.dirs())
    # a v1 cpuset with empty cpus/mems refuses tasks: both levels must be filled in
    for level in (cgroup.path.rsplit("/", 1)[0], cgroup.path):
        assert read(f"{ROOT}/cpuset/{level}/cpuset.cpus") == read(f"{ROOT}/cpuset/cpuset.cpus")
        assert read(f"{ROOT}/cpuset/{level}/cpuset.mems") == read(f"{ROOT}/cpuset/cpuset.mems")
    p = held("import time; time.sleep(30)")
    cgroup.apply(p.pid)
    lines = cgroup_lines(p.pid)
    for controller in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "name=systemd"):
        assert lines[controller] == f"/{cgroup.path}", controller
    assert cgroup.procs() == [p.pid]


def test_children_inherit_the_cgroup(cgroup, held):
    p = held("import subprocess, time\nc = subprocess.Popen(['sleep', '30'])\nprint(c.pid, flush=True)\ntime.sleep(30)")
    cgroup.apply(p.pid)
    p.release()
    child = int(p.proc.stdout.readline())
    assert cgroup_lines(child)["memory"] == f"/{cgroup.path}"
    assert cgroup_lines(child)["pids"] == f"/{cgroup.path}"
    assert sorted(cgroup.procs()) == sorted([p.pid, child])


def test_memory_limit_oom_kills_a_process_that_allocates_beyond_it(cgroup, held):
    cgroup.set(Resources(memory=32 * MB))
    assert int(ctl(cgroup, "memory", "memory.limit_in_bytes")) == 32 * MB
    assert int(ctl(cgroup, "memory", "memory.memsw.limit_in_bytes")) == 64 * MB  # Docker: swap = memory
    assert not cgroup.oom_killed()
    p = held("chunks = []\nfor _ in range(512):\n    chunks.append(bytearray(1024 * 1024))\nprint('survived')")
    cgroup.apply(p.pid)
    p.release()
    assert p.wait() == -signal.SIGKILL
    assert cgroup.oom_killed()


def test_pids_limit_stops_a_fork_loop_at_the_limit(cgroup, held):
    cgroup.set(Resources(pids_limit=8))
    p = held(
        "import os, time\nn = 0\n"
        "while n < 100:\n"
        "    try:\n        pid = os.fork()\n"
        "    except BlockingIOError:\n        print('EAGAIN', n, flush=True); break\n"
        "    if pid == 0:\n        time.sleep(30); os._exit(0)\n"
        "    n += 1\n"
        "time.sleep(30)"
    )
    cgroup.apply(p.pid)
    p.release()
    assert p.proc.stdout.readline().split() == [b"EAGAIN", b"7"]  # itself + 7 children
    assert int(ctl(cgroup, "pids", "pids.current")) == 8
    assert len(cgroup.procs()) == 8
    assert cgroup.stats()["pids_stats"] == {"current": 8, "limit": 8}


def test_cpu_quota_holds_a_busy_loop_well_below_one_cpu(cgroup, held):
    cgroup.set(Resources(nano_cpus=200_000_000))  # --cpus 0.2
    assert ctl(cgroup, "cpu", "cpu.cfs_quota_us") == "20000"
    assert ctl(cgroup, "cpu", "cpu.cfs_period_us") == "100000"
    p = held("import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end:\n    pass")
    cgroup.apply(p.pid)
    start = time.monotonic()
    p.release()
    assert p.wait() == 0
    wall = time.monotonic() - start
    used = int(ctl(cgroup, "cpuacct", "cpuacct.usage")) / 1e9
    assert used / wall < 0.5, f"busy loop got {used:.2f}s of CPU in {wall:.2f}s"
    assert cgroup.stats()["cpu_stats"]["throttling_data"]["throttled_periods"] > 0


def test_cpuset_confines_the_process(cgroup, held):
    last = str((os.cpu_count() or 1) - 1)
    cgroup.set(Resources(cpuset_cpus=last))
    p = held("import time; time.sleep(30)")
    cgroup.apply(p.pid)
    status = dict(line.split(":\t", 1) for line in read(f"/proc/{p.pid}/status").splitlines() if ":\t" in line)
    assert status["Cpus_allowed_list"].strip() == last


def test_freeze_stops_progress_and_thaw_resumes_it(cgroup, held, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    p = held(
        f"import os\nfd = os.open({str(counter)!r}, os.O_WRONLY)\ni = 0\n"
        "while True:\n    i += 1\n    os.pwrite(fd, str(i).encode().ljust(20), 0)"
    )
    cgroup.apply(p.pid)
    p.release()

    def value() -> int:
        return int(counter.read_text().strip() or 0)

    def advances() -> bool:
        before = value()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if value() > before:
                return True
            time.sleep(0.01)
        return False

    assert advances()
    cgroup.freeze()
    assert ctl(cgroup, "freezer", "freezer.state") == "FROZEN"
    frozen_at = value()
    time.sleep(0.3)
    assert value() == frozen_at
    cgroup.thaw()
    assert ctl(cgroup, "freezer", "freezer.state") == "THAWED"
    assert advances()


def test_stats_report_usage_in_docker_shape(cgroup, held):
    cgroup.set(Resources(memory=64 * MB))
    p = held("import time\nb = bytearray(20 * 1024 * 1024)\nprint('ready', flush=True)\ntime.sleep(30)")
    cgroup.apply(p.pid)
    p.release()
    assert p.proc.stdout.readline() == b"ready\n"
    s = cgroup.stats()
    mem = s["memory_stats"]
    assert mem["usage"] >= 20 * MB
    assert mem["max_usage"] >= mem["usage"] - MB
    assert mem["limit"] == 64 * MB
    assert mem["stats"]["total_rss"] + mem["stats"]["total_cache"] > 0
    cpu = s["cpu_stats"]
    assert cpu["cpu_usage"]["total_usage"] > 0
    assert len(cpu["cpu_usage"]["percpu_usage"]) == os.cpu_count()
    assert cpu["system_cpu_usage"] > cpu["cpu_usage"]["total_usage"]
    assert cpu["online_cpus"] == os.cpu_count()
    assert s["pids_stats"] == {"current": 1, "limit": 0}
    assert isinstance(s["blkio_stats"]["io_service_bytes_recursive"], list)


def test_other_limits_reach_their_files(cgroup):
    cgroup.set(Resources(cpu_shares=512, memory=16 * MB, memory_reservation=8 * MB,
                         oom_kill_disable=True, blkio_weight=300, memory_swap=-1))
    assert ctl(cgroup, "cpu", "cpu.shares") == "512"
    assert int(ctl(cgroup, "memory", "memory.soft_limit_in_bytes")) == 8 * MB
    assert "oom_kill_disable 1" in ctl(cgroup, "memory", "memory.oom_control")
    assert int(ctl(cgroup, "memory", "memory.memsw.limit_in_bytes")) > 2**60  # unlimited
    blkio_dir = os.path.join(ROOT, "blkio", cgroup.path)
    weight = [n for n in ("blkio.weight", "blkio.bfq.weight") if os.path.exists(os.path.join(blkio_dir, n))]
    assert read(os.path.join(blkio_dir, weight[0])).split()[-1] == "300"


def test_update_changes_live_limits_and_refuses_below_usage(cgroup, held):
    cgroup.set(Resources(memory=64 * MB, pids_limit=50))
    cgroup.update(Resources(memory=128 * MB, memory_swap=256 * MB))
    assert int(ctl(cgroup, "memory", "memory.limit_in_bytes")) == 128 * MB
    assert int(ctl(cgroup, "memory", "memory.memsw.limit_in_bytes")) == 256 * MB
    cgroup.update(Resources(pids_limit=-1))
    assert ctl(cgroup, "pids", "pids.max") == "max"
    assert int(ctl(cgroup, "memory", "memory.limit_in_bytes")) == 128 * MB  # untouched
    with pytest.raises(InvalidParameter, match="memoryswap"):
        cgroup.update(Resources(memory=512 * MB))  # above the memory+swap limit
    p = held("import time\nb = bytearray(40 * 1024 * 1024)\nprint('ready', flush=True)\ntime.sleep(30)")
    cgroup.apply(p.pid)
    p.release()
    assert p.proc.stdout.readline() == b"ready\n"
    with pytest.raises(InvalidParameter, match="already uses more"):
        cgroup.update(Resources(memory=8 * MB))
    assert p.proc.poll() is None  # the refused update killed nothing


def test_kernel_refusal_is_invalid_parameter(parent, unique):
    """A child cannot be given more CPU than its parent: the kernel says EINVAL."""
    outer = V1Manager(parent, ROOT)
    outer.create()
    outer.set(Resources(cpu_quota=50_000, cpu_period=100_000))
    inner = V1Manager(f"{parent}/{unique('c')}", ROOT)
    inner.create()
    with pytest.raises(InvalidParameter, match="cpu quota"):
        inner.set(Resources(nano_cpus=1_000_000_000))


def test_kill_all_signals_every_process(cgroup, held):
    procs = [held("import time; time.sleep(30)") for _ in range(3)]
    for p in procs:
        cgroup.apply(p.pid)
    cgroup.kill_all(signal.SIGTERM)
    assert [p.wait() for p in procs] == [-signal.SIGTERM] * 3
    p = held("import time; time.sleep(30)")
    cgroup.apply(p.pid)
    cgroup.freeze()
    cgroup.kill_all(signal.SIGKILL)  # also works on a paused container
    assert p.wait() == -signal.SIGKILL
    assert ctl(cgroup, "freezer", "freezer.state") == "THAWED"


def test_destroy_kills_leftovers_and_removes_every_directory(cgroup, held):
    p = held("import time; time.sleep(30)")
    cgroup.apply(p.pid)
    cgroup.freeze()
    nested = os.path.join(ROOT, "memory", cgroup.path, "nested")  # as a container with cgroupns may do
    os.mkdir(nested)
    cgroup.destroy()
    assert p.wait() == -signal.SIGKILL
    assert not cgroup.exists()
    assert not any(os.path.exists(d) for d in cgroup.dirs())
    assert os.path.isdir(os.path.join(ROOT, "memory", cgroup.path.rsplit("/", 1)[0]))  # parent kept
    cgroup.destroy()  # idempotent


def test_list_children_finds_container_cgroups(parent, unique):
    names = [f"{parent}/{unique('c')}" for _ in range(2)]
    for name in names:
        V1Manager(name, ROOT).create()
    os.mkdir(os.path.join(ROOT, "pids", parent, "half-made"))  # present in one hierarchy only
    assert list_children(parent) == sorted(names + [f"{parent}/half-made"])
    assert list_children(f"{parent}-absent") == []


def test_apply_of_a_missing_process_is_not_found(cgroup):
    with pytest.raises(NotFound):
        cgroup.apply(2**22 + 1)


def test_bad_paths_are_refused():
    for bad in ("", "/", "coracle/../../etc", ".."):
        with pytest.raises(InvalidParameter):
            manager_for(bad)


def test_invalid_resources_write_nothing(cgroup):
    before = ctl(cgroup, "cpuset", "cpuset.cpus"), ctl(cgroup, "memory", "memory.limit_in_bytes")
    with pytest.raises(InvalidParameter, match="Requested CPUs are not available"):
        cgroup.set(Resources(memory=64 * MB, cpuset_cpus="0-99"))
    with pytest.raises(InvalidParameter, match="Minimum memory limit allowed is 6MB"):
        cgroup.set(Resources(memory=MIN_MEMORY - 1, cpuset_cpus="0"))
    assert (ctl(cgroup, "cpuset", "cpuset.cpus"), ctl(cgroup, "memory", "memory.limit_in_bytes")) == before
