"""Device rules on both cgroup versions, checked by opening devices from a process inside the cgroup.

cgroup v1 is this host's; cgroup v2 is tested for real wherever a cgroup2
filesystem is mounted (on a hybrid host the BPF device filter attached to the
unified hierarchy is enforced as well).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

from coracle.cgroups import V1Manager, V2Manager
from coracle.cgroups.devices import ANY, DeviceRule, program
from coracle.errors import InvalidParameter
from harness import kill_cgroup_tree

RULES = [DeviceRule("c", ANY, ANY, "m"), DeviceRule("c", 1, 3), DeviceRule("c", 1, 5, "r")]

PROBE = """
import os
for path, flags in (("/dev/null", os.O_RDWR), ("/dev/zero", os.O_RDONLY), ("/dev/zero", os.O_WRONLY),
                    ("/dev/full", os.O_RDONLY)):
    try:
        os.close(os.open(path, flags))
        print(path, flags, "ok")
    except PermissionError:
        print(path, flags, "denied")
"""
EXPECTED = ["/dev/null 2 ok", "/dev/zero 0 ok", "/dev/zero 1 denied", "/dev/full 0 denied"]


def probe_in(cgroup_procs: list[str]) -> list[str]:
    def join() -> None:
        for procs in cgroup_procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    out = subprocess.run([sys.executable, "-c", PROBE], preexec_fn=join, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def _unified_root() -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.startswith("cgroup2 "):
            return left.split()[4]
    return None


@pytest.fixture
def parent(unique: Callable[[str], str]) -> Iterator[str]:
    name = unique("coracle-dev-")
    try:
        yield name
    finally:
        kill_cgroup_tree(name)
        root = _unified_root()
        if root and os.path.isdir(os.path.join(root, name)):
            for dirpath, _, _ in sorted(os.walk(os.path.join(root, name)), key=lambda w: -w[0].count("/")):
                os.rmdir(dirpath)


@pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup/devices"), reason="no v1 devices hierarchy on this host")
def test_v1_devices_allow_exactly_the_rules(parent: str) -> None:
    cg = V1Manager(f"{parent}/c")
    cg.create()
    cg.set_devices(RULES)
    listed = Path("/sys/fs/cgroup/devices", cg.path, "devices.list").read_text().split("\n")
    assert [line for line in listed if line] == ["c *:* m", "c 1:3 rwm", "c 1:5 r"]
    assert probe_in([os.path.join(d, "cgroup.procs") for d in cg.dirs() if "/devices/" in d]) == EXPECTED


@pytest.mark.skipif(_unified_root() is None, reason="no cgroup2 filesystem on this host")
def test_v2_bpf_filter_allows_exactly_the_rules(parent: str) -> None:
    root = _unified_root()
    assert root
    cg = V2Manager(f"{parent}/c", root=root)
    cg.create()
    cg.set_devices(RULES)
    assert probe_in([os.path.join(root, cg.path, "cgroup.procs")]) == EXPECTED


def test_filter_program_shape() -> None:
    """Allow-everything needs no program; each rule is one block ending in "allow"."""
    code = program([DeviceRule("c", 1, 3, "rwm")])
    assert len(code) % 8 == 0
    # prologue 6, rule: type check + major + minor + (r0 = 1, exit), epilogue (r0 = 0, exit)
    assert len(code) // 8 == 6 + 3 + 2 + 2


def test_rule_syntax() -> None:
    assert DeviceRule.parse("c 1:3 mr") == DeviceRule("c", 1, 3, "mr")
    assert DeviceRule.parse("b *:* m").line() == "b *:* m"
    assert DeviceRule.parse("a").allows_everything()
    for bad in ("x 1:3 r", "c 1:3 rq", "c one:3 r", "c 1:3"):
        with pytest.raises(InvalidParameter):
            DeviceRule.parse(bad)
