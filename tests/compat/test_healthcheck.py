"""Healthchecks through real clients: the docker CLI, the SDK, docker-compose and `coracle`.

Docker behaviour checked (moby daemon/health.go): a probe is an exec in the
container; success makes it `healthy`; `Retries` consecutive failures make it
`unhealthy` (failures inside the start period do not count while it was never
healthy); the last 5 results are kept with their output; a probe past its
timeout fails with "Health check exceeded timeout (D)"; every change of
status is a `health_status: S` event; `ps` shows "(healthy)", "(unhealthy)"
or "(health: starting)" and filters on `health=`; `--no-healthcheck`
disables an image's HEALTHCHECK.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable
from urllib.parse import quote

import docker
import pytest

from compat_helpers import Docker, env_for
from harness import Daemon, unique

FAST = ["--health-interval", "200ms", "--health-timeout", "2s", "--health-retries", "2"]


def _until(what: Callable[[], Any], why: str, timeout: float = 30) -> Any:
    """Poll until `what()` is truthy (bounded: a broken healthcheck fails, never hangs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {why}")


def _health(docker_: Docker, name: str) -> dict[str, Any]:
    out = docker_("inspect", "--format", "{{json .State.Health}}", name).stdout
    return json.loads(out) or {}


def test_probe_turns_healthy_then_unhealthy_with_output_events_and_ps(docker: Docker) -> None:
    name = unique("hc")
    since = str(int(time.time()) - 1)
    docker("run", "-d", "--name", name, "--health-cmd", "cat /tmp/ok || { echo missing; exit 3; }", *FAST,
           "--health-start-period", "5m", "--health-start-interval", "200ms",
           "busybox", "sh", "-c", "sleep 1; echo fine > /tmp/ok; exec sleep 600")
    assert "(health: starting)" in docker("ps", "--filter", f"name={name}").stdout
    _until(lambda: _health(docker, name).get("Status") == "healthy", "healthy")
    health = _health(docker, name)
    assert health["FailingStreak"] == 0 and health["Log"][-1]["ExitCode"] == 0
    assert health["Log"][-1]["Output"] == "fine\n"
    assert "(healthy)" in docker("ps", "--filter", f"name={name}").stdout
    assert name in docker("ps", "--filter", "health=healthy", "--format", "{{.Names}}").stdout
    assert name not in docker("ps", "--filter", "health=unhealthy", "--format", "{{.Names}}").stdout

    docker("exec", name, "rm", "/tmp/ok")
    _until(lambda: _health(docker, name).get("Status") == "unhealthy", "unhealthy")
    health = _health(docker, name)
    assert health["FailingStreak"] >= 2 and len(health["Log"]) <= 5
    assert health["Log"][-1]["ExitCode"] == 3 and "missing" in health["Log"][-1]["Output"]
    assert "(unhealthy)" in docker("ps", "--filter", f"name={name}").stdout
    assert name in docker("ps", "--filter", "health=unhealthy", "--format", "{{.Names}}").stdout

    events = docker("events", "--since", since, "--until", str(int(time.time()) + 1), "--filter",
                    f"container={name}", "--format", "{{.Action}}").stdout.splitlines()
    assert "health_status: healthy" in events and "health_status: unhealthy" in events
    health_events = [e for e in events if e.startswith("health_status")]
    assert health_events == ["health_status: healthy", "health_status: unhealthy"]  # starting is no event


def test_a_probe_past_its_timeout_fails_and_is_killed(docker: Docker) -> None:
    name = unique("hc")
    docker("run", "-d", "--name", name, "--health-cmd", "echo started; sleep 30", "--health-interval", "200ms",
           "--health-timeout", "300ms", "--health-retries", "1", "busybox", "sleep", "600")
    _until(lambda: _health(docker, name).get("Status") == "unhealthy", "unhealthy")
    last = _health(docker, name)["Log"][-1]
    assert last["ExitCode"] == -1
    assert last["Output"].startswith("Health check exceeded timeout (300ms)")
    time.sleep(1)  # a few more probes time out
    top = docker("top", name).stdout
    assert top.count("sleep 30") <= 1, top  # at most the probe in flight: timed-out ones were killed


def test_start_period_failures_do_not_count(docker: Docker) -> None:
    name = unique("hc")
    docker("run", "-d", "--name", name, "--health-cmd", "false", "--health-interval", "100ms",
           "--health-retries", "1", "--health-start-period", "60s", "--health-start-interval", "100ms",
           "busybox", "sleep", "600")
    _until(lambda: len(_health(docker, name).get("Log") or []) >= 3, "three probes")
    health = _health(docker, name)
    assert health["Status"] == "starting" and health["FailingStreak"] == 0


def test_no_healthcheck_disables_the_images_and_bad_durations_are_refused(docker: Docker, daemon: Daemon) -> None:
    base = unique("hcbase")
    image = unique("hcimg")
    docker("run", "--name", base, "busybox", "true")
    docker("commit", "--change", "HEALTHCHECK --interval=100ms CMD true", base, image)
    inherited = unique("hc")
    docker("run", "-d", "--name", inherited, image, "sleep", "600")
    _until(lambda: _health(docker, inherited).get("Status") == "healthy", "the image's healthcheck")
    disabled = unique("hc")
    docker("run", "-d", "--name", disabled, "--no-healthcheck", image, "sleep", "600")
    time.sleep(0.5)  # several of the image's intervals: no probe may run
    assert _health(docker, disabled) == {}
    assert "health" not in docker("ps", "--filter", f"name={disabled}").stdout
    assert docker("ps", "--filter", "health=none", "--format", "{{.Names}}").stdout.count(disabled) == 1

    for check, message in (({"Interval": 1000}, "Interval in Healthcheck cannot be less than 1ms"),
                           ({"Retries": -1}, "Retries in Healthcheck cannot be negative")):
        status, body = daemon.api("POST", "/containers/create", {
            "Image": "busybox", "Cmd": ["true"], "Healthcheck": {"Test": ["CMD", "true"], **check}})
        assert status == 400 and body["message"] == message
    status, body = daemon.api("GET", "/containers/json?filters=" + quote(json.dumps({"health": ["sick"]})))
    assert status == 400


def test_sdk_healthcheck_in_containers_run(client: docker.DockerClient) -> None:
    ctr = client.containers.run("busybox", "sleep 600", detach=True, name=unique("hc"),
                                healthcheck={"test": ["CMD", "true"], "interval": 100_000_000, "retries": 1})
    try:
        def healthy() -> bool:
            ctr.reload()
            return ctr.attrs["State"].get("Health", {}).get("Status") == "healthy"

        _until(healthy, "healthy through the SDK")
        assert ctr.attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "true"]
        assert client.containers.list(filters={"health": "healthy", "id": str(ctr.id)})
    finally:
        ctr.remove(force=True)


def test_native_cli_health_flags(daemon: Daemon) -> None:
    name = unique("hc")
    daemon.cli("run", "-d", "--name", name, "--health-cmd", "true", "--health-interval", "100ms", "busybox",
               "sleep", "600")
    try:
        _until(lambda: "(healthy)" in daemon.cli("ps", "--filter", f"name={name}").stdout, "(healthy) in ps")
        bad = daemon.cli("run", "--health-interval", "soon", "busybox", "true", check=False)
        assert bad.returncode == 125 and "--health-interval" in bad.stderr
        both = daemon.cli("run", "--no-healthcheck", "--health-cmd", "true", "busybox", "true", check=False)
        assert both.returncode == 125 and "--no-healthcheck conflicts with --health-* options" in both.stderr
    finally:
        daemon.cli("rm", "-f", name, check=False)


def test_health_survives_a_daemon_restart(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    name = unique("hc")
    fresh_daemon.docker("run", "-d", "--name", name, "--health-cmd", "date +%s%N", "--health-interval", "100ms",
                        "busybox", "sleep", "600")

    def health() -> dict[str, Any]:
        out = fresh_daemon.docker("inspect", "--format", "{{json .State.Health}}", name).stdout
        return json.loads(out) or {}

    _until(lambda: health().get("Status") == "healthy", "healthy")
    fresh_daemon.stop()
    fresh_daemon.start()
    assert health()["Status"] == "healthy"  # the state is in the record
    last = health()["Log"][-1]["End"]
    _until(lambda: health()["Log"][-1]["End"] != last, "a probe after the restart")


COMPOSE = shutil.which("docker-compose") or ""
COMPOSE_FILE = """\
version: "2.4"
services:
  db:
    image: busybox
    command: ["sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 600"]
    healthcheck:
      test: ["CMD", "test", "-e", "/tmp/ready"]
      interval: 200ms
      retries: 20
  app:
    image: busybox
    command: ["sleep", "600"]
    restart: unless-stopped
    depends_on:
      db:
        condition: service_healthy
"""


@pytest.mark.skipif(not COMPOSE, reason="needs docker-compose")
def test_compose_depends_on_service_healthy(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    project = unique("hcp")
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE)
    env = env_for(daemon)

    def compose(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([COMPOSE, "-p", project, "--no-ansi", *args], cwd=tmp_path, capture_output=True,
                             text=True, env=env, timeout=90)
        assert res.returncode == 0, f"docker-compose {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res

    since = str(int(time.time()) - 1)
    try:
        compose("up", "-d")
        db, app = f"{project}_db_1", f"{project}_app_1"
        assert _health(docker, db)["Status"] == "healthy"
        events = docker("events", "--since", since, "--until", str(int(time.time()) + 1), "--format",
                        "{{.Actor.Attributes.name}} {{.Action}}").stdout.splitlines()
        assert events.index(f"{db} health_status: healthy") < events.index(f"{app} start"), events
    finally:
        subprocess.run([COMPOSE, "-p", project, "down", "-v"], cwd=tmp_path, capture_output=True, env=env,
                       timeout=90)
    assert not [c for c in docker("ps", "-a", "--format", "{{.Names}}").stdout.split() if c.startswith(project)]
