"""The official docker CLI (28.x) against coracled: container verbs.

Each test runs the real `docker` binary with DOCKER_HOST pointing at the
session's daemon and checks what a user reads on the terminal (output, exit
codes, formatted fields), not only that the command returned 0.
"""

from __future__ import annotations

from collections.abc import Callable
import json
import re
import subprocess
import time

from compat_helpers import Docker, env_for, inspect
from harness import Daemon, unique


def test_version_and_info(docker: Docker) -> None:
    version = json.loads(docker("version", "--format", "{{json .}}").stdout)
    assert version["Server"]["ApiVersion"] >= "1.45"
    assert version["Client"]["ApiVersion"] == version["Server"]["ApiVersion"]  # negotiated down
    assert version["Server"]["Os"] == "linux"
    info = json.loads(docker("info", "--format", "{{json .}}").stdout)
    assert info["OSType"] == "linux" and info["Driver"] == "overlay2"
    assert info["NCPU"] >= 1 and info["ServerVersion"]


def test_run_attached_output_and_exit_codes(docker: Docker) -> None:
    res = docker("run", "--rm", "busybox", "sh", "-c", "echo to-out; echo to-err >&2")
    assert res.stdout == "to-out\n" and res.stderr == "to-err\n"
    res = docker("run", "--rm", "busybox", "sh", "-c", "exit 7", check=False)
    assert res.returncode == 7
    res = docker("run", "--rm", "busybox", "/no/such/binary", check=False)
    assert res.returncode == 127 and "no/such/binary" in res.stderr


def test_run_rm_removes_the_container(docker: Docker) -> None:
    name = unique("rm")
    docker("run", "--rm", "--name", name, "busybox", "true")
    assert docker("ps", "-a", "-q", "--filter", f"name={name}").stdout.strip() == ""


def test_piped_stdin(daemon: Daemon) -> None:
    """`echo data | docker run -i busybox cat`: the pipe's EOF ends cat, the output still arrives."""
    res = subprocess.run("echo data | docker run -i --rm busybox cat", shell=True, capture_output=True,
                         text=True, env=env_for(daemon), timeout=30)
    assert (res.returncode, res.stdout) == (0, "data\n"), res.stderr
    big = "x" * 300_000
    res = subprocess.run(["docker", "run", "-i", "--rm", "busybox", "wc", "-c"], input=big, capture_output=True,
                         text=True, env=env_for(daemon), timeout=30)
    assert res.stdout.strip() == str(len(big))


def test_run_detached_then_logs_ps_inspect(docker: Docker) -> None:
    name = unique("det")
    cid = docker("run", "-d", "--name", name, "-l", "role=compat", "busybox",
                 "sh", "-c", "echo one; echo two; echo three; exec sleep 60").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    row = json.loads(docker("ps", "--filter", f"name={name}", "--format", "{{json .}}").stdout)
    assert row["ID"] == cid[:12] and row["Names"] == name and row["State"] == "running"
    assert row["Status"].startswith("Up")
    running = docker("ps", "-q", "--filter", "label=role=compat", "--filter", "status=running")
    assert running.stdout.split() == [cid[:12]]
    assert docker("ps", "-q", "--filter", "status=exited", "--filter", f"name={name}").stdout.strip() == ""
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", name).stdout)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"sleep"
    networks = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", name).stdout)
    ip = docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
    assert list(networks) == ["bridge"] and networks["bridge"]["IPAddress"] == ip and ip
    _wait_for(lambda: docker("logs", name).stdout == "one\ntwo\nthree\n")
    assert docker("logs", "--tail", "1", name).stdout == "three\n"
    stamped = docker("logs", "-t", "--tail", "2", name).stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["two", "three"]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ", line) for line in stamped)
    docker("rm", "-f", name)
    assert docker("ps", "-aq", "--filter", f"name={name}").stdout.strip() == ""


def test_logs_follow_ends_with_the_container(docker: Docker) -> None:
    name = unique("lf")
    docker("run", "-d", "--name", name, "busybox", "sh", "-c", "for i in 1 2 3; do echo l$i; sleep 0.2; done")
    res = docker("logs", "-f", name, timeout=20)
    assert res.stdout == "l1\nl2\nl3\n"


def test_create_then_start_attached(docker: Docker) -> None:
    name = unique("cr")
    docker("create", "--name", name, "busybox", "sh", "-c", "echo created-out; exit 3")
    assert inspect(docker, name)["State"]["Status"] == "created"
    res = docker("start", "-a", name, check=False)
    assert (res.returncode, res.stdout) == (3, "created-out\n")


def test_exec_options_and_exit_code(docker: Docker) -> None:
    name = unique("ex")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    res = docker("exec", "-e", "GREETING=hello", "-u", "nobody", "-w", "/tmp", name,
                 "sh", "-c", "echo $GREETING; id -u; pwd; exit 4", check=False)
    assert (res.returncode, res.stdout) == (4, "hello\n65534\n/tmp\n")
    docker("exec", "-d", name, "sh", "-c", "echo detached > /tmp/mark")
    _wait_for(lambda: docker("exec", name, "cat", "/tmp/mark", check=False).stdout == "detached\n")
    res = docker("exec", "-i", name, "cat", input="via-stdin")
    assert res.stdout == "via-stdin"
    res = docker("exec", "no-such-container-" + name, "true", check=False)
    assert res.returncode != 0 and "No such container" in res.stderr


def test_stop_kill_restart_wait(docker: Docker, daemon: Daemon) -> None:
    name = unique("lc")
    docker("run", "-d", "--name", name, "busybox", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
    pid = inspect(docker, name)["State"]["Pid"]
    docker("restart", "-t", "5", name)
    state = inspect(docker, name)["State"]
    assert state["Running"] and state["Pid"] != pid
    assert docker("stop", "-t", "5", name).stdout.strip() == name
    state = inspect(docker, name)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)  # SIGTERM trapped: clean exit
    docker("start", name)
    waiter = subprocess.Popen(["docker", "wait", name], stdout=subprocess.PIPE, text=True,
                              env=env_for(daemon))
    docker("kill", name)
    assert waiter.communicate(timeout=20)[0].strip() == "137"
    res = docker("kill", name, check=False)
    assert res.returncode == 1 and "is not running" in res.stderr


def test_top_stats_port_rename_pause(docker: Docker) -> None:
    name, renamed = unique("tp"), unique("tq")
    docker("run", "-d", "--name", name, "-p", "127.0.0.1::80", "-p", "18081:81/udp", "busybox", "sleep", "60")
    top = docker("top", name).stdout.splitlines()
    assert top[0].split()[:2] == ["UID", "PID"] and "sleep 60" in top[1]
    stats = json.loads(docker("stats", "--no-stream", "--format", "{{json .}}", name, timeout=30).stdout)
    assert stats["Name"] == name and stats["PIDs"] == "1" and "/" in stats["MemUsage"]
    ports = docker("port", name).stdout.splitlines()
    assert "81/udp -> 0.0.0.0:18081" in ports
    assert any(re.fullmatch(r"80/tcp -> 127\.0\.0\.1:\d+", p) for p in ports), ports
    assert docker("port", name, "81/udp").stdout.split() == ["0.0.0.0:18081", "[::]:18081"]  # both, as Docker
    docker("rename", name, renamed)
    assert inspect(docker, renamed)["Name"] == "/" + renamed
    assert docker("inspect", name, check=False).returncode == 1
    docker("pause", renamed)
    row = json.loads(docker("ps", "--filter", f"name={renamed}", "--format", "{{json .}}").stdout)
    assert row["State"] == "paused" and "(Paused)" in row["Status"]
    res = docker("exec", renamed, "true", check=False)
    assert res.returncode != 0 and "paused" in res.stderr
    docker("unpause", renamed)
    assert docker("exec", renamed, "echo", "back").stdout == "back\n"


def test_errors_in_dockers_words(docker: Docker) -> None:
    name = unique("er")
    res = docker("inspect", "no-such-" + name, check=False)
    assert res.returncode == 1 and "No such object" in res.stderr
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    res = docker("run", "--name", name, "busybox", "true", check=False)
    assert res.returncode == 125 and "Conflict" in res.stderr and "is already in use" in res.stderr
    res = docker("rm", name, check=False)
    assert res.returncode == 1 and "cannot remove a running container" in res.stderr
    res = docker("run", "--rm", "--network", "no-such-net-" + name, "busybox", "true", check=False)
    assert res.returncode == 125 and "not found" in res.stderr
    res = docker("stop", "no-such-" + name, check=False)
    assert res.returncode == 1 and "No such container" in res.stderr


def _wait_for(predicate: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
