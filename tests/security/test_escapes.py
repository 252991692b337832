"""Escape attempts from a default container: every one must fail, and the host must not change."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from collections.abc import Iterator

import pytest
from security_support import Containers

from coracle.cgroups import Resources

MARKER = b"coracle-host-disk-marker"


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A loop device standing in for a host disk, detached afterwards."""
    image = tmp_path / "disk.img"
    image.write_bytes(MARKER + bytes(1 << 20))
    dev = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_cannot_mount_or_remount(containers: Containers) -> None:
    r = containers.run(["sh", "-c", "mkdir /m; mount -t tmpfs t /m && echo MOUNTED; "
                                    "mount -o remount,rw /sys && echo REMOUNTED; "
                                    "mount -o remount,rw /sys/fs/cgroup/memory && echo REMOUNTED; true"])
    assert "MOUNTED" not in r.output and "REMOUNTED" not in r.output
    assert "permission denied" in r.output.lower()


def test_kernel_interfaces_in_proc_are_masked_or_read_only(containers: Containers) -> None:
    key = "/proc/sys/kernel/printk_ratelimit"
    before = Path(key).read_text()
    r = containers.run(["sh", "-c", f"cat {key} > /tmp/v; cat /tmp/v > {key} && echo WROTE-SYSCTL; "
                                    "echo h > /proc/sysrq-trigger && echo WROTE-SYSRQ; "
                                    "echo timer_list=$(wc -c < /proc/timer_list); "
                                    "echo kcore=$(wc -c < /proc/kcore); echo keys=$(wc -c < /proc/keys); "
                                    "ls /sys/firmware | wc -l"])
    assert "WROTE-SYSCTL" not in r.output and "WROTE-SYSRQ" not in r.output
    assert "Read-only file system" in r.output
    assert Path("/proc/timer_list").read_text()  # the host has something there...
    assert "timer_list=0" in r.output  # ...the container sees nothing
    assert "kcore=\n" in r.output or "kcore=0" in r.output
    assert r.output.rstrip().endswith("\n0")  # /sys/firmware is an empty directory
    assert Path(key).read_text() == before


def test_cannot_load_a_kernel_module(containers: Containers) -> None:
    r = containers.run(["sh", "-c", "echo junk > /tmp/evil.ko; insmod /tmp/evil.ko; echo rc=$?"])
    assert "rc=0" not in r.output
    assert "not permitted" in r.output


def test_host_block_device_unreachable_unless_granted(containers: Containers, loop_device: str) -> None:
    st = os.stat(loop_device)
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    attempt = ["sh", "-c", f"ls /dev; mknod /tmp/disk b {major} {minor} && echo NODE; head -c {len(MARKER)} /tmp/disk; "
                           "mknod /tmp/kmsg c 1 11 && head -c 1 /tmp/kmsg; true"]
    r = containers.run(attempt)
    assert "NODE" in r.output  # creating a node is allowed (as in Docker)...
    assert MARKER.decode() not in r.output  # ...opening it is not
    assert r.output.count("Operation not permitted") == 2
    assert os.path.basename(loop_device) not in r.output.split()  # not in the container's /dev either

    granted = containers.run(["sh", "-c",
                              f"head -c {len(MARKER)} /dev/xvda; echo; echo x > /dev/xvda || echo NO-WRITE"],
                             {"Devices": [{"PathOnHost": loop_device, "PathInContainer": "/dev/xvda",
                                           "CgroupPermissions": "r"}]})
    assert MARKER.decode() in granted.output
    assert "NO-WRITE" in granted.output
    with open(loop_device, "rb") as f:
        assert f.read(len(MARKER)) == MARKER


def test_hostname_changes_stay_in_the_container(containers: Containers) -> None:
    host = os.uname().nodename
    denied = containers.run(["sh", "-c", "hostname evil; hostname"])
    assert "evil" not in denied.output.split()  # no CAP_SYS_ADMIN: not even its own
    own = containers.run(["sh", "-c", "hostname evil && hostname"], {"CapAdd": ["SYS_ADMIN"]})
    assert own.output.split()[-1] == "evil"
    assert os.uname().nodename == host


def test_host_processes_are_invisible_and_unreachable(containers: Containers) -> None:
    me = os.getpid()
    r = containers.run(["sh", "-c", f"kill -0 {me} && echo SIGNALLED; ls /proc/{me} >/dev/null 2>&1 && echo SEEN; "
                                    "ps -o pid | wc -l"])
    assert "SIGNALLED" not in r.output and "SEEN" not in r.output
    assert int(r.output.split()[-1]) <= 4  # header, sh, ps, wc


def test_cgroup_release_agent_cannot_be_set(containers: Containers) -> None:
    host_agent = Path("/sys/fs/cgroup/memory/release_agent")
    before = host_agent.read_text() if host_agent.exists() else None
    r = containers.run(["sh", "-c", "ls /sys/fs/cgroup/memory/; "
                                    "echo /evil > /sys/fs/cgroup/memory/release_agent && echo AGENT; "
                                    "echo 1 > /sys/fs/cgroup/memory/notify_on_release && echo NOTIFY; "
                                    "mkdir /sys/fs/cgroup/memory/x && echo CHILD; true"])
    assert "memory.limit_in_bytes" in r.output  # the container's own cgroup is visible...
    assert "AGENT" not in r.output and "NOTIFY" not in r.output and "CHILD" not in r.output
    assert "Read-only file system" in r.output  # ...read-only
    if before is not None:
        assert host_agent.read_text() == before


def test_daemon_sockets_are_out_of_reach(containers: Containers, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        monitor_sock = Path(containers.monitor.path)
        r = containers.run(["sh", "-c", f"test -e {path} && echo API; test -e {monitor_sock} && echo MONITOR; true"])
    assert "API" not in r.output and "MONITOR" not in r.output


def test_pids_limit_holds(containers: Containers) -> None:
    """A fork loop stops at the limit; the survivors are counted with shell builtins only."""
    forker = "i=0; while [ $i -lt 30 ]; do sleep 30 & i=$((i+1)); echo started=$i; done"
    script = f"sh -c '{forker}'; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n"
    r = containers.run(["sh", "-c", script], resources=Resources(pids_limit=8))
    assert "started=30" not in r.output, r.output
    assert "started=5" in r.output  # it did run until the limit
    count = int(r.output.rsplit("procs=", 1)[1].split()[0])
    assert count <= 8


def test_seccomp_blocks_user_namespaces_and_unconfined_does_not(containers: Containers) -> None:
    attempt = ["sh", "-c", "unshare -U true && echo USERNS"]
    confined = containers.run(attempt)
    assert "USERNS" not in confined.output
    assert "Operation not permitted" in confined.output
    # the same container without the filter: the kernel alone would have allowed it
    unconfined = containers.run(attempt, {"SecurityOpt": ["seccomp=unconfined"]})
    assert "USERNS" in unconfined.output
    # the profile follows the capabilities: with CAP_SYS_ADMIN, unshare is allowed again
    admin = containers.run(attempt, {"CapAdd": ["SYS_ADMIN"]})
    assert "USERNS" in admin.output
