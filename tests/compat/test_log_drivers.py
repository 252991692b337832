"""Logging drivers with the docker CLI: `none`, unknown drivers, json-file's attrs, `logs --details`.

Docker's behaviour checked: a container with `--log-driver none` runs and its
`docker logs` fails with "configured logging driver does not support reading";
an unknown driver is refused at create ("logger: no log driver named 'x' is
registered", 400) and leaves no container; json-file's `labels`, `env` and
`env-regex` options add those labels' and variables' values to every line as
"attrs", which `docker logs --details` prints before the line as
`key=value,...` (sorted, query-escaped); `local` keeps Docker's own format.
"""

from __future__ import annotations

import gzip
import json
import os
import struct

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
    assert status == 400 and body["message"] == "logger: no log driver named 'x' is registered"
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


def test_details_without_attrs(docker: Docker) -> None:
    """Docker prints an empty attrs field (a leading space) when a line has none."""
    name = unique("ld")
    docker("run", "--name", name, "busybox", "echo", "plain")
    assert docker("logs", "--details", name).stdout == " plain\n"


def _frames(data: bytes) -> list[tuple[str, bytes]]:
    """(source, line) of each entry of Docker's local format: uint32 size, LogEntry, uint32 size."""
    out, at = [], 0
    while at < len(data):
        (size,) = struct.unpack_from(">I", data, at)
        body = data[at + 4:at + 4 + size]
        assert struct.unpack_from(">I", data, at + 4 + size)[0] == size
        at += 8 + size
        fields, i = {}, 0
        while i < len(body):
            key = body[i]
            i += 1
            if key & 7 == 2:  # length-delimited (all our lengths and field numbers fit one byte)
                fields[key >> 3], i = body[i + 1:i + 1 + body[i]], i + 1 + body[i]
            else:
                while body[i] & 0x80:
                    i += 1
                i += 1
        out.append((fields[1].decode(), fields[3]))
    return out


def test_local_driver_format_rotation_and_compression(docker: Docker, daemon: Daemon) -> None:
    """Docker's `local` format: protobuf entries framed by their length, rotated files
    gzipped (container.log.1.gz ...), at most max-file files; LogPath stays empty."""
    name = unique("ll")
    docker("run", "--name", name, "--log-driver", "local", "--log-opt", "max-size=4k", "--log-opt", "max-file=3",
           "busybox", "sh", "-c", "i=0; while [ $i -lt 400 ]; do echo line-$i; i=$((i+1)); done; echo err >&2")
    assert docker("inspect", "-f", "{{.LogPath}}|{{.HostConfig.LogConfig.Type}}", name).stdout == "|local\n"
    cid = docker("inspect", "-f", "{{.Id}}", name).stdout.strip()
    directory = os.path.join(daemon.data_root, "containers", cid)
    logs = sorted(n for n in os.listdir(directory) if n.startswith("container.log"))
    assert logs == ["container.log", "container.log.1.gz", "container.log.2.gz"]
    entries = []
    for n in reversed(logs):
        with open(os.path.join(directory, n), "rb") as f:
            raw = f.read()
        entries += _frames(gzip.decompress(raw) if n.endswith(".gz") else raw)
    out = [line for source, line in entries if source == "stdout"]
    assert out[-1] == b"line-399" and ("stderr", b"err") in entries
    shown = docker("logs", name)
    assert shown.stderr == "err\n"
    assert shown.stdout.splitlines() == [line.decode() for line in out]  # what the files hold, in order
    assert "line-0\n" not in shown.stdout  # rotated away: three files of at most 4k
    last = docker("logs", "--tail", "2", name)
    assert len(last.stdout.splitlines() + last.stderr.splitlines()) == 2 and last.stdout.endswith("line-399\n")
    res = docker("create", "--log-driver", "local", "--log-opt", "labels=a", "busybox", check=False)
    assert res.returncode == 1 and "unknown log opt 'labels' for local log driver" in res.stderr


def test_local_driver_follow(docker: Docker) -> None:
    """`docker logs -f` reads the local format as it is written, to the container's end."""
    name = unique("lf")
    docker("run", "-d", "--name", name, "--log-driver", "local", "busybox", "sh", "-c",
           "echo one; sleep 1; echo two")
    assert docker("logs", "-f", name).stdout == "one\ntwo\n"
