"""Rootless cgroups in a delegated cgroup v2 subtree.

MOCK: this machine has cgroup v1 and a cgroup2 without controllers, so no
subtree can be delegated here for real. These tests lay out a cgroup2 tree in
a temporary directory (fake_cgroup2.FakeCgroup2, which plays the kernel), own
the delegated part by an ordinary user (as systemd's Delegate=yes does; inside
the rootless user namespace those files appear owned by root) and run the
detection as that user, so writability is judged by the kernel's real
permission checks. What they check: which subtree is found, where coracle's
own processes and the containers' cgroups go, which controllers are enabled
where, and which limits are refused with what message. They cannot prove that
a limit bites. The one real check: on this host (cgroup v1) nothing is found.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from coracle import cgroups, rootless
from coracle.cgroups import Resources, V2Manager, delegation
from coracle.cgroups.unconfined import Unconfined
from coracle.errors import InvalidParameter
from fake_cgroup2 import FakeCgroup2

MB = 1024 * 1024
NOBODY = 65534
OWN = "user.slice/user-1000.slice/user@1000.service/app.slice/coracled.service"
T = TypeVar("T")


def as_user(fn: Callable[[], T]) -> T:
    """fn() run in a child process as an ordinary user (uid/gid NOBODY when run by root), its result
    pickled back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            if os.geteuid() == 0:  # run by an ordinary user, the test already is one
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            with os.fdopen(w, "wb") as out:
                pickle.dump(fn(), out)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: T = pickle.loads(data)
    return result


class Host:
    """A fake cgroup2 host with the daemon's cgroup OWN, and its /proc/self/cgroup."""

    def __init__(self, base: Path, controllers: str = "cpu io memory pids") -> None:
        self.fake = FakeCgroup2(base / "cgroup")
        self.root = self.fake.root
        here = self.root
        for part in OWN.split("/"):  # systemd enabled these controllers all the way down
            here = self.fake.mkcg(here / part, controllers)
        self.own = here
        self.proc_cgroup = base / "cgroup-of-self"
        self.in_cgroup(OWN)

    def in_cgroup(self, path: str) -> None:
        self.proc_cgroup.write_text(f"0::/{path}\n")

    def delegate(self) -> None:
        """What Delegate=yes does: the user owns the cgroup's directory and its management files."""
        for p in (self.own, self.own / "cgroup.procs", self.own / "cgroup.subtree_control"):
            os.chown(p, NOBODY, NOBODY)

    def find(self) -> delegation.Delegation | None:
        root, proc = str(self.root), str(self.proc_cgroup)
        return as_user(lambda: delegation.find(root, proc))


@pytest.fixture
def base() -> Iterator[Path]:
    """A temporary directory an ordinary user can reach (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="coracle-delegation-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def rootless_with(monkeypatch: pytest.MonkeyPatch) -> Callable[[delegation.Delegation | None], None]:
    """Make this process look like a rootless daemon with the given delegation (MOCK)."""
    def use(d: delegation.Delegation | None) -> None:
        monkeypatch.setattr(rootless, "active", lambda: True)
        monkeypatch.setattr(delegation, "current", lambda: d)
    return use


def test_a_delegated_subtree_holds_the_daemon_in_a_leaf_and_containers_beside_it(base, rootless_with):
    host = Host(base)
    host.delegate()
    d = host.find()
    assert d == delegation.Delegation(str(host.root), OWN, frozenset({"cpu", "io", "memory", "pids"}))
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (host.own / "cgroup.procs").write_text(f"{sleeper.pid}\n")
        host.fake.mkcg(host.own / "coracled", "")  # as the kernel makes it on mkdir
        delegation.prepare(d)
        assert (host.own / "coracled/cgroup.procs").read_text() == str(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()

    rootless_with(d)
    m = cgroups.manager_for("coracle/abc")
    assert isinstance(m, V2Manager)
    assert m.dirs() == [str(host.own / "coracle/abc")]
    host.fake.mkcg(host.own / "coracle", "cpu io memory pids")  # as the kernel makes it on mkdir
    m.create()
    host.fake.mkcg(host.own / "coracle/abc", "cpu io memory pids")
    assert (host.own / "cgroup.subtree_control").read_text() == "+cpu +io +memory +pids"
    assert (host.own / "coracle/cgroup.subtree_control").read_text() == "+cpu +io +memory +pids"
    assert (host.root / "cgroup.subtree_control").read_text() == ""  # nothing above the delegated cgroup
    m.set(Resources.from_host_config({"Memory": 64 * MB, "NanoCpus": 500_000_000, "PidsLimit": 50}))
    assert (host.own / "coracle/abc/memory.max").read_text() == str(64 * MB)
    assert (host.own / "coracle/abc/cpu.max").read_text() == "50000 100000"
    assert (host.own / "coracle/abc/pids.max").read_text() == "50"
    assert cgroups.list_children("coracle") == ["coracle/abc"]
    assert cgroups.driver() == "cgroupfs"


def test_a_daemon_restarted_inside_the_leaf_finds_the_same_subtree(base):
    host = Host(base)
    host.delegate()
    host.in_cgroup(f"{OWN}/coracled")
    found = host.find()
    assert found is not None and found.own == OWN


def test_a_limit_needing_a_controller_the_subtree_lacks_is_refused_by_name(base, rootless_with):
    host = Host(base, controllers="cpu pids")
    host.delegate()
    d = host.find()
    assert d is not None and d.controllers == {"cpu", "pids"}
    rootless_with(d)
    with pytest.raises(InvalidParameter) as refused:
        Resources.from_host_config({"Memory": 64 * MB})
    assert str(refused.value).startswith(
        "--memory cannot be applied: the requested cgroup controller `memory` is not available in this "
        f"rootless daemon's delegated cgroup v2 subtree /{OWN} (controllers: cpu pids)")
    assert Resources.from_host_config({"PidsLimit": 50}).pids_limit == 50
    assert Resources.from_host_config({"NanoCpus": 500_000_000}).nano_cpus == 500_000_000


@pytest.mark.root  # the tree must belong to someone other than the user who looks at it
def test_a_cgroup_the_user_cannot_write_is_not_delegated(base, rootless_with):
    host = Host(base)  # everything stays root's: the user's daemon could write nothing
    assert host.find() is None
    rootless_with(None)
    assert isinstance(cgroups.manager_for("coracle/abc"), Unconfined)
    with pytest.raises(InvalidParameter, match=r"resource limits \(--memory\) cannot be applied: this daemon "
                                               "runs rootless and no cgroup is delegated"):
        Resources.from_host_config({"Memory": 64 * MB})
    assert cgroups.driver() == "none"


def test_this_cgroup_v1_host_delegates_nothing():
    """Real: no cgroup2 with controllers here, so a rootless daemon stays Unconfined."""
    assert delegation.find() is None
