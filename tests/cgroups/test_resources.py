"""Resources: Docker's HostConfig in, Docker's messages out for bad input, and
nothing created in the cgroup tree when the input is refused."""

from __future__ import annotations

import os

import pytest

from coracle.cgroups import Resources, list_children, manager_for
from coracle.errors import InvalidParameter

MB = 1024 * 1024
NCPU = os.sysconf("SC_NPROCESSORS_ONLN")


def test_from_host_config_reads_docker_keys():
    r = Resources.from_host_config({
        "Memory": 64 * MB, "MemorySwap": 128 * MB, "MemoryReservation": 32 * MB,
        "NanoCpus": 500_000_000, "CpuShares": 512, "CpusetCpus": "0", "CpusetMems": "0",
        "PidsLimit": 100, "BlkioWeight": 300, "OomKillDisable": True,
        "CpuPeriod": None, "CpuQuota": 0, "Binds": ["/a:/b"],
    })
    assert r == Resources(memory=64 * MB, memory_swap=128 * MB, memory_reservation=32 * MB,
                          nano_cpus=500_000_000, cpu_shares=512, cpuset_cpus="0", cpuset_mems="0",
                          pids_limit=100, blkio_weight=300, oom_kill_disable=True)
    assert r.cpu_limit() == (50_000, 100_000)
    assert Resources.from_host_config({}) == Resources()


@pytest.mark.parametrize("hc, message", [
    ({"Memory": 5 * MB}, "Minimum memory limit allowed is 6MB"),
    ({"Memory": -5}, "Memory limit cannot be negative"),
    ({"NanoCpus": 1_000_000_000, "CpuQuota": 50_000}, "Nano CPUs and CPU Quota cannot both be set"),
    ({"NanoCpus": 1_000_000_000, "CpuPeriod": 50_000}, "Nano CPUs and CPU Period cannot both be set"),
    ({"NanoCpus": (NCPU + 1) * 1_000_000_000}, f"Range of CPUs is from 0.01 to {NCPU}.00"),
    ({"CpuQuota": 500}, "CPU cfs quota can not be less than 1ms"),
    ({"CpuPeriod": 100}, "CPU cfs period can not be less than 1ms"),
    ({"CpuShares": -1}, "CPU shares cannot be negative"),
    ({"CpusetCpus": "0-"}, "Invalid value 0- for cpuset cpus"),
    ({"CpusetCpus": "3-1"}, "Invalid value 3-1 for cpuset cpus"),
    ({"CpusetCpus": f"0-{NCPU + 7}"}, "Requested CPUs are not available"),
    ({"CpusetMems": "63"}, "Requested memory nodes are not available"),
    ({"MemorySwap": 64 * MB}, "You should always set the Memory limit when using Memoryswap limit"),
    ({"Memory": 64 * MB, "MemorySwap": 32 * MB}, "Minimum memoryswap limit should be larger than memory limit"),
    ({"Memory": 64 * MB, "MemoryReservation": 128 * MB}, "can not be less than memory reservation"),
    ({"MemoryReservation": MB}, "Minimum memory reservation allowed is 6MB"),
    ({"BlkioWeight": 5}, "Range of blkio weight is from 10 to 1000"),
    ({"Memory": "64m"}, "invalid value '64m' for Memory"),
])
def test_bad_host_config_is_invalid_parameter(hc, message):
    with pytest.raises(InvalidParameter) as e:
        Resources.from_host_config(hc)
    assert message in str(e.value)


def test_update_accepts_swap_alone():
    Resources(memory_swap=128 * MB).validate(update=True)


def test_cpu_shares_convert_to_cgroup2_weight():
    assert Resources(cpu_shares=2).cpu_weight() == 1
    assert Resources(cpu_shares=1024).cpu_weight() == 39
    assert Resources(cpu_shares=262_144).cpu_weight() == 10_000
    assert Resources(cpu_shares=10**9).cpu_weight() == 10_000


def provision(path: str, host_config: dict) -> None:
    """What the engine does for a new container: validate, then create and limit."""
    r = Resources.from_host_config(host_config)
    m = manager_for(path)
    m.create()
    m.set(r)


@pytest.mark.parametrize("hc", [
    {"CpusetCpus": "0-99"},
    {"Memory": 4 * MB},
    {"NanoCpus": 500_000_000, "CpuQuota": 20_000},
])
def test_refused_input_creates_no_cgroup(parent, unique, hc):
    with pytest.raises(InvalidParameter):
        provision(f"{parent}/{unique('c')}", hc)
    assert list_children(parent) == []
    assert not any(os.path.exists(d) for d in manager_for(parent).dirs())
