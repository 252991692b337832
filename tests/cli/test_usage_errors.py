"""Usage errors of the native CLI: docker's exit statuses and words, verb by verb.

Docker behaviour checked (docker CLI 28): a wrong number of arguments exits 1 with
`docker: 'docker VERB' requires …`, the usage line and `See`/`Run 'docker VERB --help'
for more information`; a flag it does not know exits 125 with `unknown flag: --x` (or
`unknown shorthand flag: 'x' in -x`), the usage line and `Run …`. Checked before the
daemon is asked anything, so no daemon runs here. Where the docker CLI is installed each
case is also compared with its whole output (Docker's own `SRun` typo for "at most N"
aside).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

DOCKER = shutil.which("docker")
ENV = {**os.environ, "DOCKER_HOST": "unix:///nonexistent", "CORACLE_HOST": "unix:///nonexistent"}

# (arguments, exit status, first line of stderr) as docker gives them, "docker" spelled "coracle"
CASES = [
    (["stop"], 1, "coracle: 'coracle stop' requires at least 1 argument"),
    (["rm"], 1, "coracle: 'coracle rm' requires at least 1 argument"),
    (["kill"], 1, "coracle: 'coracle kill' requires at least 1 argument"),
    (["start"], 1, "coracle: 'coracle start' requires at least 1 argument"),
    (["run"], 1, "coracle: 'coracle run' requires at least 1 argument"),
    (["create"], 1, "coracle: 'coracle create' requires at least 1 argument"),
    (["logs"], 1, "coracle: 'coracle logs' requires 1 argument"),
    (["logs", "a", "b"], 1, "coracle: 'coracle logs' requires 1 argument"),
    (["exec"], 1, "coracle: 'coracle exec' requires at least 2 arguments"),
    (["exec", "a"], 1, "coracle: 'coracle exec' requires at least 2 arguments"),
    (["inspect"], 1, "coracle: 'coracle inspect' requires at least 1 argument"),
    (["rename", "a"], 1, "coracle: 'coracle rename' requires 2 arguments"),
    (["rename", "a", "b", "c"], 1, "coracle: 'coracle rename' requires 2 arguments"),
    (["cp", "a"], 1, "coracle: 'coracle cp' requires 2 arguments"),
    (["port"], 1, "coracle: 'coracle port' requires at least 1 and at most 2 arguments"),
    (["commit", "a", "b", "c"], 1, "coracle: 'coracle commit' requires at least 1 and at most 2 arguments"),
    (["ps", "x"], 1, "coracle: 'coracle ps' accepts no arguments"),
    (["images", "a", "b"], 1, "coracle: 'coracle images' requires at most 1 argument"),
    (["tag", "a"], 1, "coracle: 'coracle tag' requires 2 arguments"),
    (["pull"], 1, "coracle: 'coracle pull' requires 1 argument"),
    (["search"], 1, "coracle: 'coracle search' requires 1 argument"),
    (["import"], 1, "coracle: 'coracle import' requires at least 1 argument"),
    (["load", "x"], 1, "coracle: 'coracle load' accepts no arguments"),
    (["events", "x"], 1, "coracle: 'coracle events' accepts no arguments"),
    (["network", "rm"], 1, "coracle: 'coracle network rm' requires at least 1 argument"),
    (["network", "create"], 1, "coracle: 'coracle network create' requires 1 argument"),
    (["network", "connect", "n"], 1, "coracle: 'coracle network connect' requires 2 arguments"),
    (["volume", "rm"], 1, "coracle: 'coracle volume rm' requires at least 1 argument"),
    (["volume", "create", "a", "b"], 1, "coracle: 'coracle volume create' requires at most 1 argument"),
    (["container", "list", "x"], 1, "coracle: 'coracle container ls' accepts no arguments"),
    (["image", "inspect"], 1, "coracle: 'coracle image inspect' requires at least 1 argument"),
    (["system", "df", "x"], 1, "coracle: 'coracle system df' accepts no arguments"),
    (["manifest", "inspect"], 1, "coracle: 'coracle manifest inspect' requires at least 1 and at most 2 arguments"),
    (["stop", "--bogus", "x"], 125, "unknown flag: --bogus"),
    (["tag", "--bogus", "a"], 125, "unknown flag: --bogus"),  # the flag before the count
    (["ps", "-z"], 125, "unknown shorthand flag: 'z' in -z"),
    (["network", "ls", "--bogus"], 125, "unknown flag: --bogus"),
]


def coracle(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coracle.cli.main", *args], env=ENV, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=30)


@pytest.mark.parametrize(("args", "status", "first"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_usage_errors_are_dockers(args: list[str], status: int, first: str) -> None:
    res = coracle(args)
    assert (res.returncode, res.stderr.splitlines()[0]) == (status, first)
    lines = res.stderr.splitlines()
    assert lines[2].startswith("Usage:  coracle ") and lines[-1].endswith("--help' for more information")
    assert res.stdout == ""
    if DOCKER:
        theirs = subprocess.run([DOCKER, *args], env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=30)
        assert res.returncode == theirs.returncode
        assert res.stderr == theirs.stderr.replace("docker", "coracle").replace("\nSRun '", "\nRun '")
