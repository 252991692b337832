"""Logging drivers with the docker CLI: `none`, unknown drivers, json-file's attrs, `logs --details`.

Docker's behaviour checked: a container with `--log-driver none` runs and its
`docker logs` fails with "configured logging driver does not support reading";
an unknown driver is refused at create ("logger: no log driver named 'x' is
registered", 400) and leaves no container; json-file's `labels`, `env` and
`env-regex` options add those labels' and variables' values to every line as
"attrs", which `docker logs --details` prints before the line as
`key=value,...` (sorted, query-escaped).
"""

from __future__ import annotations

import json

from compat_helpers import Docker
from harness import Daemon, unique


def test_none_driver_runs_and_logs_cannot_be_read(docker: Docker) -> None:
    name = unique("ln")
    res = docker("run", "--name", name, "--log-driver", "none", "busybox", "sh", "-c", "echo visible; exit 3",
                 check=False)
    assert res.returncode == 3 and res.stdout == "visible\n"  # attached output still flows
    assert docker("inspect", "-f", "{{.HostConfig.LogConfig.Type}}|{{.LogPath}}", name).stdout == "none|\n"
    res = docker("logs", name, check=False)
    assert res.returncode == 1
    assert "configured logging driver does not support reading" in res.stderr


def test_unknown_driver_is_refused_at_create(docker: Docker, daemon: Daemon) -> None:
    name = unique("lu")
    res = docker("run", "--name", name, "--log-driver", "nosuchdriver", "busybox", check=False)
    assert res.returncode == 125  # docker run's status for a refused create
    assert "logger: no log driver named 'nosuchdriver' is registered" in res.stderr
    assert docker("ps", "-a", "-q", "--filter", f"name={name}").stdout == ""  # nothing left behind
    status, body = daemon.api("POST", "/containers/create", {"Image": "busybox",
                                                             "HostConfig": {"LogConfig": {"Type": "x"}}})
    assert status == 400 and body["message"] == "logger: no log driver named 'x' is registered"  # type: ignore[index]
    res = docker("create", "--log-opt", "colour=blue", "busybox", check=False)
    assert res.returncode == 1 and "unknown log opt 'colour' for json-file log driver" in res.stderr


def test_json_file_attrs_and_logs_details(docker: Docker) -> None:
    name = unique("la")
    docker("run", "--name", name, "--label", "team=core", "--label", "tier=web app", "--label", "other=x",
           "-e", "REGION=eu", "-e", "APP_MODE=fast", "-e", "SECRET=no",
           "--log-opt", "labels=team,tier,absent", "--log-opt", "env=REGION", "--log-opt", "env-regex=^APP_",
           "busybox", "sh", "-c", "echo first; echo second >&2")
    path = docker("inspect", "-f", "{{.LogPath}}", name).stdout.strip()
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    expected = {"team": "core", "tier": "web app", "REGION": "eu", "APP_MODE": "fast"}
    assert [line["attrs"] for line in lines] == [expected, expected]
    res = docker("logs", "--details", name)
    prefix = "APP_MODE=fast,REGION=eu,team=core,tier=web+app "
    assert res.stdout == prefix + "first\n" and res.stderr == prefix + "second\n"
    assert docker("logs", name).stdout == "first\n"  # without --details: the line alone


def test_details_without_attrs_and_local_driver(docker: Docker) -> None:
    """Docker prints an empty attrs field (a leading space) when a line has none; `local`
    is accepted with its own options and read back by `docker logs`."""
    name = unique("ld")
    docker("run", "--name", name, "busybox", "echo", "plain")
    assert docker("logs", "--details", name).stdout == " plain\n"
    local = unique("ll")
    docker("run", "--name", local, "--log-driver", "local", "--log-opt", "max-size=1m", "busybox", "echo", "kept")
    assert docker("logs", local).stdout == "kept\n"
    res = docker("create", "--log-driver", "local", "--log-opt", "labels=a", "busybox", check=False)
    assert res.returncode == 1 and "unknown log opt 'labels' for local log driver" in res.stderr
