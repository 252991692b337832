"""An ordinary user runs coracled and drives it with the docker CLI and `coracle`."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from rootless_support import RootlessUser, files_on_host

# makes throwaway users with subordinate ids: the root tier
pytestmark = pytest.mark.root

T = TypeVar("T")


def _eventually(check: Callable[[], T], what: str, timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)


def _host_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def test_daemon_runs_as_the_user_with_its_own_directories(user: RootlessUser) -> None:
    info = json.loads(user.docker("info", "--format", "{{json .}}").stdout)
    assert "name=rootless" in info["SecurityOptions"]
    assert info["DockerRootDir"] == f"{user.home}/.local/share/coracle"
    assert "rootless" in user.coracle("info").stdout
    assert os.stat(user.sock).st_uid == user.uid
    assert user.daemon is not None
    daemon_pids = [p for p in user.leftovers() if b"coracle.daemon" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert daemon_pids and all(_host_uid(p) == user.uid for p in daemon_pids)
    # the coracle CLI finds the user's daemon by itself (XDG_RUNTIME_DIR), as the docker CLI does with DOCKER_HOST
    assert user.run([user.python, "-m", "coracle.cli.main", "version", "--format", "{{.Server.Version}}"]).stdout


def test_lifecycle_run_exec_logs_stop_rm(user: RootlessUser) -> None:
    cid = user.docker("run", "-d", "--name", "life", "busybox", "sh", "-c",
                      "echo started; trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done").stdout.strip()
    try:
        pid = int(user.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout)
        assert _host_uid(pid) == user.uid  # the container's root is the user on the host
        assert user.docker("exec", "life", "id", "-u").stdout.strip() == "0"
        assert user.coracle("exec", "life", "cat", "/proc/self/uid_map").stdout.split()[:3] == ["0", str(user.uid), "1"]
        _eventually(lambda: "started" in user.docker("logs", "life").stdout, "the first log line")
        user.docker("stop", "life")
        assert "bye" in user.docker("logs", "life").stdout
        assert user.docker("inspect", "-f", "{{.State.ExitCode}}", "life").stdout.strip() == "0"
    finally:
        user.docker("rm", "-f", "life", check=False)
    assert "life" not in user.docker("ps", "-a", "--format", "{{.Names}}").stdout


def test_attach_with_a_terminal(user: RootlessUser) -> None:
    res = user.run(["script", "-qec", f"docker -H unix://{user.sock} run --rm -it busybox sh", "/dev/null"],
                   input="echo $((6 * 7)) && tty\nexit 3\n", check=False)
    assert res.returncode == 3
    assert "42" in res.stdout and "/dev/pts/0" in res.stdout


def test_restart_policy_restarts_a_failing_container(user: RootlessUser) -> None:
    user.docker("run", "-d", "--name", "flaky", "--restart", "always", "busybox", "sh", "-c", "sleep 0.2; exit 3")
    try:
        _eventually(lambda: int(user.docker("inspect", "-f", "{{.RestartCount}}", "flaky").stdout) >= 2,
                    "two restarts")
    finally:
        user.docker("rm", "-f", "flaky")


def test_containers_and_published_ports_survive_a_daemon_restart(user: RootlessUser) -> None:
    user.docker("run", "-d", "--name", "kept", "-p", "18080:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")
    try:
        pid = user.docker("inspect", "-f", "{{.State.Pid}}", "kept").stdout.strip()
        _eventually(lambda: user.lan("wget", "-q", "-O-", "http://10.231.0.2:18080/hostname", check=False).stdout,
                    "the published port")
        user.stop_daemon()
        # the daemon is gone: the container and its published port are not
        assert user.lan("wget", "-q", "-O-", "http://10.231.0.2:18080/hostname").stdout.strip()
        user.start_daemon()
        assert user.docker("inspect", "-f", "{{.State.Running}} {{.State.Pid}}", "kept").stdout.split() == \
            ["true", pid]
        assert user.docker("exec", "kept", "echo", "joined").stdout.strip() == "joined"
    finally:
        user.docker("rm", "-f", "kept")


def _tar_with_owned_file() -> bytes:
    """An image tarball (docker save layout) with /owned belonging to 1234:2345."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        info = tarfile.TarInfo("owned")
        info.uid, info.gid, info.size = 1234, 2345, 2
        t.addfile(info, io.BytesIO(b"hi"))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/owned"]},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    import hashlib

    diff_id = "sha256:" + hashlib.sha256(layer.getvalue()).hexdigest()
    config = config.replace(b'"diff_ids": []', f'"diff_ids": ["{diff_id}"]'.encode())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data in (("layer.tar", layer.getvalue()), ("config.json", config),
                           ("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["owned:1"],
                                                          "Layers": ["layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _owner_on_host(root: Path, name: str) -> tuple[int, int]:
    found = files_on_host(root, name)
    assert found, f"{name} not under {root}"
    return found[0].st_uid, found[0].st_gid


def test_load_and_commit_map_ownership_through_the_subordinate_ids(user: RootlessUser) -> None:
    archive = user.root / "owned.tar"
    archive.write_bytes(_tar_with_owned_file())
    os.chmod(archive, 0o644)
    user.docker("load", "-i", str(archive))
    data_root = user.home / ".local/share/coracle"
    # inside: the ids of the archive; on the host: the user's subordinate ids (1234 -> base + 1233)
    user.docker("create", "--name", "loaded", "owned:1")
    try:
        user.docker("export", "-o", f"{user.home}/loaded.tar", "loaded")
    finally:
        user.docker("rm", "loaded")
    with tarfile.open(user.home / "loaded.tar") as t:
        member = t.getmember("owned")
        assert (member.uid, member.gid) == (1234, 2345)
    assert _owner_on_host(data_root, "owned") == (user.subid + 1233, user.subid + 2344)
    user.docker("run", "--name", "tocommit", "busybox", "sh", "-c",
                "echo x > /committed && chown 42:43 /committed")
    try:
        user.docker("commit", "tocommit", "committed:1")
    finally:
        user.docker("rm", "tocommit")
    assert user.docker("run", "--rm", "committed:1", "stat", "-c", "%u:%g", "/committed").stdout.strip() == "42:43"
    owners = {st.st_uid for st in files_on_host(data_root, "committed")}
    assert user.subid + 41 in owners


def test_limits_are_refused_clearly_and_leave_nothing(user: RootlessUser) -> None:
    before = user.docker("ps", "-aq").stdout
    for flag in (["--memory", "64m"], ["--cpus", "0.5"], ["--pids-limit", "50"]):
        res = user.docker("run", "--rm", *flag, "busybox", "true", check=False)
        assert res.returncode != 0
        assert f"resource limits ({flag[0]}) cannot be applied: this daemon runs rootless" in res.stderr
    assert user.docker("ps", "-aq").stdout == before
    assert user.docker("run", "--rm", "busybox", "echo", "unlimited").stdout.strip() == "unlimited"


def test_an_unusable_tun_device_is_reported_with_the_fix(bare_user: RootlessUser) -> None:
    if os.access("/dev/net/tun", os.R_OK | os.W_OK, effective_ids=False) and \
            os.stat("/dev/net/tun").st_mode & 0o006 == 0o006:
        pytest.skip("/dev/net/tun is usable by everyone on this machine")
    bare_user.start_daemon(tun=False, wait=False)
    assert bare_user.daemon is not None
    assert bare_user.daemon.wait(60) != 0
    log = bare_user.log.read_text()
    assert "/dev/net/tun is not readable and writable by you" in log and "chmod 0666 /dev/net/tun" in log
