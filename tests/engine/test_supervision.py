"""Supervision that outlives its supervisor: the monitor, the keeper and the daemon may die.

Each test runs its own coracled, kills one of coracle's processes with SIGKILL
(or freezes the daemon) while containers run and clients stream, and checks
what a user would see: the container still runs and its output is in its
log, exit codes are exact, clients end with a clear message instead of
hanging or claiming success, and nothing is killed at the next restart.
"""

from __future__ import annotations

from collections.abc import Callable
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from harness import PYTHON, Daemon

QUITTERS = 200  # more exits than the monitor's socket to the daemon holds events for (about 170)
WRITER = 'trap "echo got-term; exit 7" TERM; i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.1; done'


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return False


def state(d: Daemon, ref: str) -> dict:
    status, body = d.api("GET", f"/containers/{ref}/json")
    assert status == 200, body
    return body["State"]


def run_detached(d: Daemon, script: str) -> str:
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["sh", "-c", script],
                                                          "HostConfig": {"NetworkMode": "none"}})
    assert status == 201, body
    cid = body["Id"]
    status, body = d.api("POST", f"/containers/{cid}/start")
    assert status == 204, body
    return cid


def logged_lines(d: Daemon, cid: str) -> list[str]:
    path = d.data_root / "containers" / cid / f"{cid}-json.log"
    return [json.loads(line)["log"].strip() for line in path.read_text().splitlines() if line.endswith("}")]


def last_number(lines: list[str]) -> int:
    numbers = [int(line[5:]) for line in lines if line.startswith("line-")]
    return numbers[-1] if numbers else -1


def wait_for(predicate: Callable[..., object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def client(d: Daemon, *args: str) -> subprocess.Popen:
    """A `coracle` client left running in the background (logs -f, attach, exec)."""
    return subprocess.Popen([PYTHON, "-m", "coracle.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "CORACLE_HOST": d.host})


def published(pid: int | None, what: str) -> int:
    """A pid the daemon has written (the test stops clearly when it has not)."""
    assert pid is not None, f"the daemon has not published its {what} pid"
    return pid


def new_monitor(d: Daemon, old: int) -> int:
    wait_for(lambda: d.monitor_pid() not in (None, old) and alive(d.monitor_pid() or 0), "a new monitor")
    return published(d.monitor_pid(), "monitor")


def test_a_killed_monitor_costs_no_container_output_or_exit_code(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    streamed, restarted = run_detached(d, WRITER), run_detached(d, WRITER)
    pids = {cid: state(d, cid)["Pid"] for cid in (streamed, restarted)}
    follower = client(d, "logs", "-f", streamed)
    attached = client(d, "attach", "--no-stdin", streamed)
    execed = client(d, "exec", streamed, "sh", "-c", "echo exec-started; sleep 60; echo exec-done")
    try:
        assert execed.stdout.readline().strip() == "exec-started"  # type: ignore[union-attr]  # Popen(stdout=PIPE)
        assert attached.stdout.readline().startswith("line-")  # type: ignore[union-attr]  # Popen(stdout=PIPE)
        wait_for(lambda: last_number(logged_lines(d, streamed)) >= 5, "output in the log")

        old = published(d.monitor_pid(), "monitor")
        os.kill(old, signal.SIGKILL)
        at_kill = {cid: last_number(logged_lines(d, cid)) for cid in pids}
        new_monitor(d, old)

        # The exec's client does not claim success for a run it did not see end.
        out, err = execed.communicate(timeout=30)
        assert execed.returncode != 0
        assert "monitor restarted" in err
        assert "exec-done" not in out

        # the containers run on and what they write from now on is logged
        for cid, pid in pids.items():
            assert alive(pid)
            wait_for(lambda cid=cid: last_number(logged_lines(d, cid)) >= at_kill[cid] + 20, "output after the kill")

        # logs -f and attach go on and end with the container, whose exit code is exact
        assert d.api("POST", f"/containers/{streamed}/stop?t=10")[0] == 204
        assert state(d, streamed)["ExitCode"] == 7
        out, _ = follower.communicate(timeout=30)
        assert "got-term" in out and f"line-{at_kill[streamed] + 20}" in out
        out, err = attached.communicate(timeout=30)
        assert "monitor restarted" in err
        assert "got-term" in out and f"line-{at_kill[streamed] + 20}" in out
        assert attached.returncode == 7

        # a daemon restart adopts the other: nothing is reported missing, nothing is killed
        d.stop(signal.SIGKILL)
        d.start()
        report = d.cli("system", "check", "--dry-run").stdout
        assert restarted[:12] not in report and restarted not in report, report
        assert state(d, restarted)["Running"] and state(d, restarted)["Pid"] == pids[restarted]
        d.cli("system", "check")
        assert alive(pids[restarted])
        assert d.api("POST", f"/containers/{restarted}/stop?t=10")[0] == 204
        final = state(d, restarted)
        assert not final["Running"] and final["ExitCode"] == 7  # exact, though its monitor died
        lines = logged_lines(d, restarted)
        assert lines[-1] == "got-term"
        numbers = [int(line[5:]) for line in lines if line.startswith("line-")]
        assert numbers == list(range(len(numbers)))  # not one line lost around the kill
    finally:
        for proc in (follower, attached, execed):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_container_outlives_its_monitor_and_daemon_killed_in_turn(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    cid = run_detached(d, WRITER)
    pid = state(d, cid)["Pid"]
    wait_for(lambda: last_number(logged_lines(d, cid)) >= 3, "output in the log")
    d.stop(signal.SIGKILL)
    os.kill(published(d.monitor_pid(), "monitor"), signal.SIGKILL)
    at_kill = last_number(logged_lines(d, cid))
    d.start()
    assert state(d, cid)["Running"] and alive(pid)
    at_restart = max(at_kill, last_number(logged_lines(d, cid)))
    wait_for(lambda: last_number(logged_lines(d, cid)) >= at_restart + 10, "output after both restarts")
    assert d.api("POST", f"/containers/{cid}/stop?t=10")[0] == 204
    assert state(d, cid)["ExitCode"] == 7


def test_an_exit_while_no_monitor_runs_is_exact_and_its_last_output_kept(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    cid = run_detached(d, "sleep 2; echo last-words; exit 5")
    pid = state(d, cid)["Pid"]
    keeper = published(d.keeper_pid(), "keeper")
    old = published(d.monitor_pid(), "monitor")
    os.kill(keeper, signal.SIGSTOP)  # no new monitor until it exits
    try:
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: not alive(pid), "the container to end", timeout=30)
    finally:
        os.kill(keeper, signal.SIGCONT)
    new_monitor(d, old)
    wait_for(lambda: not state(d, cid)["Running"], "the exit to be recorded")
    assert state(d, cid)["ExitCode"] == 5
    assert logged_lines(d, cid)[-1] == "last-words"


def test_a_killed_keeper_leaves_containers_running_and_logging(fresh_daemon: Daemon) -> None:
    """What is lost with the keeper: the exit codes of the containers it parented; nothing else."""
    d = fresh_daemon
    d.start()
    cid = run_detached(d, WRITER)
    pid = state(d, cid)["Pid"]
    wait_for(lambda: last_number(logged_lines(d, cid)) >= 3, "output in the log")
    keeper = published(d.keeper_pid(), "keeper")
    os.kill(keeper, signal.SIGKILL)
    wait_for(lambda: not alive(keeper), "the keeper to die")
    at_kill = last_number(logged_lines(d, cid))
    wait_for(lambda: last_number(logged_lines(d, cid)) >= at_kill + 10, "output after the keeper died")
    assert alive(pid) and state(d, cid)["Running"]
    fresh = run_detached(d, "sleep 0.5; exit 3")  # the monitor reaps new containers itself now
    wait_for(lambda: not state(d, fresh)["Running"], "the new container to exit")
    assert state(d, fresh)["ExitCode"] == 3
    assert d.api("POST", f"/containers/{cid}/stop?t=10")[0] == 204
    old_state = state(d, cid)
    assert not old_state["Running"] and not alive(pid)
    assert old_state["ExitCode"] in (7, 137)  # its status went with the keeper: stopped, so 137


def test_a_frozen_daemon_stalls_no_container_output(fresh_daemon: Daemon) -> None:
    """SIGSTOP the daemon for 10 s while containers write and exit: their logs keep growing meanwhile.

    The exits of more containers than a socket buffer holds events for happen during the
    freeze, so the monitor cannot hand them to the daemon. Liveness, not speed: the writer
    prints every 0.1 s, so a 2 s window without one new logged line means the monitor was
    stuck (it used to wait 5 s on the frozen daemon, then drop it).
    """
    d = fresh_daemon
    d.start()
    gate = d.root / "gate"
    gate.mkdir()
    writer = run_detached(d, WRITER)

    def quitter(_: int) -> str:
        status, body = d.api("POST", "/containers/create", {
            "Image": "busybox", "Cmd": ["sh", "-c", "until [ -e /gate/go ]; do sleep 0.2; done; exit 3"],
            "HostConfig": {"NetworkMode": "none", "Binds": [f"{gate}:/gate:ro"]}})
        assert status == 201, body
        assert d.api("POST", f"/containers/{body['Id']}/start")[0] == 204
        return body["Id"]

    with ThreadPoolExecutor(8) as pool:
        quitters = list(pool.map(quitter, range(QUITTERS)))
    d.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]  # started above
    samples: list[tuple[float, int]] = []
    try:
        (gate / "go").touch()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), last_number(logged_lines(d, writer))))
            time.sleep(0.2)
    finally:
        d.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]  # started above
    stuck = [(round(t1 - t0, 1), n0) for (t0, n0), (t1, n1) in zip(samples, samples[10:], strict=False)
             if n1 == n0]
    assert not stuck, f"no new log line for 2 s while the daemon was frozen: {stuck}"
    for cid in quitters:  # every exit that happened meanwhile is recorded, exactly
        wait_for(lambda cid=cid: not state(d, cid)["Running"], "exits recorded after the freeze")
        assert state(d, cid)["ExitCode"] == 3
    assert "replaced" not in d.log.read_text()


def test_containers_get_the_conventional_descriptor_limit(fresh_daemon: Daemon) -> None:
    """coracle's own processes raise their limit; what they start does not inherit it."""
    d = fresh_daemon
    d.start()
    cid = run_detached(d, "ulimit -n")
    wait_for(lambda: not state(d, cid)["Running"], "the container to exit")
    assert logged_lines(d, cid) == ["1024"]


def test_a_container_nobody_supervises_is_adopted_never_killed(fresh_daemon: Daemon) -> None:
    """Keeper and monitor both killed: reconciliation finds it alive by /proc and leaves it running."""
    d = fresh_daemon
    d.start()
    cid = run_detached(d, 'trap "exit 7" TERM; while :; do sleep 0.1; done')
    pid = state(d, cid)["Pid"]
    keeper, old = published(d.keeper_pid(), "keeper"), published(d.monitor_pid(), "monitor")
    os.kill(keeper, signal.SIGKILL)
    wait_for(lambda: not alive(keeper), "the keeper to die")
    os.kill(old, signal.SIGKILL)
    new_monitor(d, old)  # the daemon starts a fresh keeper and monitor
    report = d.cli("system", "check", "--dry-run").stdout
    assert "no process" not in report and "adopted" in report, report
    d.cli("system", "check")
    d.stop()
    d.start()
    assert alive(pid) and state(d, cid)["Running"]
    assert d.api("POST", f"/containers/{cid}/stop?t=10")[0] == 204
    final = state(d, cid)
    assert not final["Running"] and not alive(pid)
    assert final["ExitCode"] == 137  # its status died with its parent: stopped through the API, so 137


def test_a_terminal_outlives_the_monitor(fresh_daemon: Daemon) -> None:
    """The keeper holds the master of a container's terminal (opened in the container after
    the monitor spawned it): a killed monitor hangs up no terminal, the shell goes on
    writing to it and its exit code stays exact."""
    d = fresh_daemon
    d.start()
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["sh", "-c", WRITER], "Tty": True,
                                                          "OpenStdin": True, "HostConfig": {"NetworkMode": "none"}})
    assert status == 201, body
    cid = body["Id"]
    assert d.api("POST", f"/containers/{cid}/start")[0] == 204
    wait_for(lambda: last_number(logged_lines(d, cid)) >= 3, "output in the log")
    old = published(d.monitor_pid(), "monitor")
    os.kill(old, signal.SIGKILL)
    at_kill = last_number(logged_lines(d, cid))
    new_monitor(d, old)
    wait_for(lambda: last_number(logged_lines(d, cid)) >= at_kill + 10, "output after the restart")
    assert state(d, cid)["Running"]
    assert d.api("POST", f"/containers/{cid}/stop?t=10")[0] == 204
    assert state(d, cid)["ExitCode"] == 7  # TERM, not a hang-up
