"""Containers through a real coracled: lifecycle, isolation, limits, exec, errors.

Driven with the Docker SDK and raw Engine API calls against a private daemon
running in a throwaway network namespace (see tests/harness.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import docker
import pytest

from harness import Daemon, kill_cgroup_tree


@pytest.fixture
def client(daemon: Daemon):  # type: ignore[no-untyped-def]
    c = daemon.sdk()
    yield c
    for ctr in c.containers.list(all=True):
        with contextlib.suppress(docker.errors.APIError):
            ctr.remove(force=True)
    c.close()


def cgroup_dirs(daemon: Daemon, cid: str) -> list[Path]:
    return [p / daemon.cgroup_parent / cid for p in Path("/sys/fs/cgroup").iterdir()
            if (p / daemon.cgroup_parent / cid).exists()]


def test_run_output_and_exit_code(client) -> None:  # type: ignore[no-untyped-def]
    out = client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2"], remove=True,
                                stdout=True, stderr=True)
    assert b"out" in out
    ctr = client.containers.run("busybox", ["sh", "-c", "exit 3"], detach=True)
    assert ctr.wait()["StatusCode"] == 3
    ctr.reload()
    assert ctr.attrs["State"]["Status"] == "exited" and ctr.attrs["State"]["ExitCode"] == 3


def test_isolation_seen_from_inside(client, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", "sleep 60", detach=True, hostname="inside", network_mode="none")
    code, out = ctr.exec_run(["sh", "-c", "hostname; ps -o pid,args; ip -o link | wc -l; cat /proc/1/cmdline"])
    lines = out.decode().splitlines()
    assert code == 0
    assert lines[0] == "inside"
    procs = [line.split(None, 1) for line in lines[2:] if line.strip()[:1].isdigit() and len(line.split()) > 1]
    assert ["1", "sleep 60"] in procs  # the command is PID 1
    assert lines[-2].strip() == "1"  # none mode: only lo
    assert lines[-1].startswith("sleep")
    pid = ctr.attrs["State"]["Pid"] or client.api.inspect_container(ctr.id)["State"]["Pid"]
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")


def test_host_mode_sees_the_hosts_interfaces(client, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    daemon.netns_exec("ip", "link", "add", "hostmark0", "type", "veth", "peer", "name", "hostmark1")
    try:
        out = client.containers.run("busybox", ["ip", "-o", "link"], network_mode="host", remove=True)
    finally:
        daemon.netns_exec("ip", "link", "del", "hostmark0", check=False)
    assert b"hostmark0" in out


def test_exec_joins_namespaces_and_cgroup(client, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", "sleep 60", detach=True)
    pid = client.api.inspect_container(ctr.id)["State"]["Pid"]
    exec_id = client.api.exec_create(ctr.id, ["sleep", "30"])["Id"]
    client.api.exec_start(exec_id, detach=True)
    deadline = time.monotonic() + 5
    while not client.api.exec_inspect(exec_id)["Pid"] and time.monotonic() < deadline:
        time.sleep(0.02)
    epid = client.api.exec_inspect(exec_id)["Pid"]
    for ns in ("mnt", "uts", "ipc", "pid", "net", "cgroup"):
        assert os.readlink(f"/proc/{epid}/ns/{ns}") == os.readlink(f"/proc/{pid}/ns/{ns}"), ns
    assert Path(f"/proc/{epid}/cgroup").read_text() == Path(f"/proc/{pid}/cgroup").read_text()
    code, out = ctr.exec_run(["sh", "-c", "echo $HOME $FOO; exit 4"], environment={"FOO": "bar"})
    assert code == 4 and out.decode().split() == ["/root", "bar"]


def test_memory_limit_oom_kills(client) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run(
        "busybox", ["sh", "-c", "x=a; while true; do x=$x$x$x$x; done"], detach=True, mem_limit="16m",
        memswap_limit="16m")
    assert ctr.wait(timeout=60)["StatusCode"] == 137
    ctr.reload()
    assert ctr.attrs["State"]["OOMKilled"] is True
    assert ctr.attrs["HostConfig"]["Memory"] == 16 << 20


def spare_cgroups(daemon: Daemon) -> dict[str, list[int]]:
    """The spare child's cgroups under the daemon's parent (pids hierarchy), with their processes."""
    parent = Path("/sys/fs/cgroup/pids") / daemon.cgroup_parent
    found = {}
    for d in parent.iterdir():
        if d.name.startswith("spare-"):
            with contextlib.suppress(FileNotFoundError):  # swept meanwhile
                found[d.name] = [int(p) for p in (d / "cgroup.procs").read_text().split()]
    return found


def test_a_container_is_born_in_the_cgroup_given_to_the_spare_child(client, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    """cgroups/spare.py: between starts the monitor's spare child moves into a cgroup made for it; the
    next container's PID 1 is born there and its start renames that cgroup to the container's, in
    every hierarchy. The container is confined before its code runs, its limits bite, and neither
    `system check` nor a start under another cgroup parent is confused by the spare's cgroup."""
    client.containers.run("busybox", "true", remove=True)
    deadline = time.monotonic() + 10
    while not any(spare_cgroups(daemon).values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    staged = [name for name, procs in spare_cgroups(daemon).items() if procs]
    assert len(staged) == 1, spare_cgroups(daemon)
    assert "No inconsistencies found" in daemon.cli("system", "check", "--dry-run").stdout

    ctr = client.containers.run("busybox", "sleep 60", detach=True, mem_limit="16m", memswap_limit="16m")
    pid = client.api.inspect_container(ctr.id)["State"]["Pid"]
    placement = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    v1 = [line for line in placement if not line.startswith("0::")]
    assert v1 and all(line.endswith(f"/{daemon.cgroup_parent}/{ctr.id}") for line in v1), placement
    assert staged[0] not in spare_cgroups(daemon)  # renamed, not emptied: the start took it over
    assert ctr.exec_run(["sh", "-c", "x=a; while true; do x=$x$x$x$x; done"]).exit_code == 137

    other = f"{daemon.cgroup_parent}-other"
    try:
        elsewhere = client.containers.run("busybox", "sleep 60", detach=True, cgroup_parent=other)
        pid = client.api.inspect_container(elsewhere.id)["State"]["Pid"]
        assert f":/{other}/{elsewhere.id}" in Path(f"/proc/{pid}/cgroup").read_text()
        elsewhere.remove(force=True)
    finally:
        kill_cgroup_tree(other)
    def settled() -> bool:
        """The empty spare cgroups swept, and the one left holding the spare child (which moves in
        just after its cgroup is made)."""
        spares = spare_cgroups(daemon)
        return len(spares) <= 1 and all(spares.values())

    deadline = time.monotonic() + 10
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert settled(), spare_cgroups(daemon)


def test_pids_limit_contains_a_fork_bomb(client) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", "sleep 60", detach=True, pids_limit=12)
    ctr.exec_run(["sh", "-c", "for i in $(seq 40); do sleep 30 & done"])
    stats = ctr.stats(stream=False)
    assert 1 < stats["pids_stats"]["current"] <= 12
    assert stats["pids_stats"]["limit"] == 12
    ctr.reload()
    assert ctr.status == "running"  # contained, not dead


def test_stop_kill_pause_restart(client, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"],
                                detach=True)
    ctr.pause()
    ctr.reload()
    assert ctr.status == "paused"
    ctr.unpause()
    ctr.stop(timeout=5)
    ctr.reload()
    assert ctr.attrs["State"]["ExitCode"] == 0  # SIGTERM was handled by the trap
    ctr.restart(timeout=1)
    ctr.reload()
    assert ctr.status == "running"
    ctr.kill(signal="SIGKILL")
    ctr.reload()
    assert ctr.attrs["State"]["ExitCode"] == 137


def test_rm_removes_cgroups_and_files(client, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", "sleep 60", detach=True, mem_limit="32m")
    assert cgroup_dirs(daemon, ctr.id)
    with pytest.raises(docker.errors.APIError) as err:
        ctr.remove()
    assert err.value.status_code == 409
    ctr.remove(force=True)
    assert not cgroup_dirs(daemon, ctr.id)
    assert not (daemon.data_root / "containers" / ctr.id).exists()


def test_bad_input_is_refused_clearly_and_leaves_nothing(client, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    before = sorted(os.listdir(daemon.data_root / "containers"))
    status, body = daemon.api("POST", "/containers/create", {"Image": "busybox:nope"})
    assert status == 404 and "No such image" in body["message"]
    status, body = daemon.api("POST", "/containers/create", {"Image": "busybox", "HostConfig": {"Memory": 1024}})
    assert status == 400 and "Minimum memory limit" in body["message"]
    status, body = daemon.api("POST", "/containers/create", b"{not json")
    assert status == 400
    status, body = daemon.api("POST", "/containers/create?name=bad%20name", {"Image": "busybox"})
    assert status == 400 and "Invalid container name" in body["message"]
    ctr = client.containers.create("busybox", "true", name="taken")
    status, body = daemon.api("POST", "/containers/create?name=taken", {"Image": "busybox"})
    assert status == 409 and "already in use" in body["message"]
    ctr.remove()
    assert sorted(os.listdir(daemon.data_root / "containers")) == before


def test_start_failure_reports_and_cleans_up(client, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.create("busybox", "no-such-command")
    with pytest.raises(docker.errors.APIError) as err:
        ctr.start()
    assert "executable file not found" in str(err.value)
    ctr.reload()
    assert ctr.attrs["State"]["ExitCode"] == 127 and not ctr.attrs["State"]["Running"]
    assert not cgroup_dirs(daemon, ctr.id)


def test_logs_keep_streams_apart(client) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", ["sh", "-c", "echo one; echo two >&2; echo three"], detach=True)
    ctr.wait()
    assert ctr.logs(stdout=True, stderr=False).decode().split() == ["one", "three"]
    assert ctr.logs(stdout=False, stderr=True).decode().split() == ["two"]
    assert ctr.logs(stderr=False, tail=1).decode().split() == ["three"]
    stamped = ctr.logs(timestamps=True).decode().splitlines()[0]
    assert stamped.split(" ", 1)[0].endswith("Z")


def test_bind_mount_tmpfs_readonly(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "f").write_text("from host")
    out = client.containers.run(
        "busybox", ["sh", "-c", "cat /data/f; echo new > /data/g; touch /ro 2>&1 || echo ro-ok; "
                                "mount | grep -c ' /scratch type tmpfs'"],
        volumes={str(tmp_path): {"bind": "/data", "mode": "rw"}}, tmpfs={"/scratch": "size=1m"},
        read_only=True, remove=True).decode()
    assert "from host" in out and "ro-ok" in out and out.split()[-1] == "1"
    assert (tmp_path / "g").read_text() == "new\n"


def test_init_reaps_and_forwards_signals(client) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", "sleep 60", detach=True, init=True)
    code, out = ctr.exec_run(["cat", "/proc/1/cmdline"])
    assert out.startswith(b"/sbin/docker-init")
    ctr.stop(timeout=5)  # tini forwards SIGTERM to sleep, which dies of it
    ctr.reload()
    assert ctr.attrs["State"]["ExitCode"] == 143


def test_restart_policy_on_failure(client) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", ["sh", "-c", "exit 1"], detach=True,
                                restart_policy={"Name": "on-failure", "MaximumRetryCount": 2})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ctr.reload()
        if ctr.attrs["RestartCount"] == 2 and ctr.status == "exited":
            break
        time.sleep(0.1)
    assert ctr.attrs["RestartCount"] == 2 and ctr.status == "exited"


def test_ps_filters_and_names(client) -> None:  # type: ignore[no-untyped-def]
    a = client.containers.run("busybox", "sleep 60", detach=True, name="alpha", labels={"tier": "web"})
    client.containers.create("busybox", "true", name="beta")
    assert [c.name for c in client.containers.list()] == ["alpha"]
    assert {c.name for c in client.containers.list(all=True)} >= {"alpha", "beta"}
    assert [c.name for c in client.containers.list(filters={"label": "tier=web"})] == ["alpha"]
    assert [c.name for c in client.containers.list(all=True, filters={"status": "created"})] == ["beta"]
    assert client.containers.get(a.id[:8]).name == "alpha"
    a.rename("gamma")
    assert client.containers.get("gamma").id == a.id
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("alpha")  # the old name is free again...
    again = client.containers.create("busybox", "true", name="alpha")  # ...and can be taken
    with pytest.raises(docker.errors.APIError, match="already in use"):
        client.containers.create("busybox", "true", name="gamma")
    again.remove()
    assert client.containers.create("busybox", "true", name="alpha").id != again.id


def test_stop_with_negative_timeout_waits_for_the_process(client) -> None:  # type: ignore[no-untyped-def]
    ctr = client.containers.run("busybox", ["sh", "-c", "trap 'sleep 1; exit 3' TERM; while true; do sleep 0.1; done"],
                                detach=True)
    time.sleep(0.2)
    client.api.stop(ctr.id, timeout=-1)  # Docker: -1 never escalates to SIGKILL
    ctr.reload()
    assert ctr.attrs["State"]["ExitCode"] == 3
