"""Flags that used to be accepted and ignored now do what Docker does with them.

Docker behaviour checked: `--pid host`/`--uts host`/`--ipc host` share the
host's namespace (and `--uts host` refuses `--hostname`); `exec` of a command
that cannot be started exits 126; `top CONTAINER ps-args` runs ps with those
arguments and keeps the container's rows; `ps -s` shows the virtual size
(writable layer plus image).
"""

from __future__ import annotations

import os

from compat_helpers import Docker
from harness import unique


def test_host_pid_uts_ipc_namespaces(docker: Docker) -> None:
    own = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "uts", "ipc")}
    out = docker("run", "--rm", "--pid", "host", "--uts", "host", "--ipc", "host", "busybox", "sh", "-c",
                 "for n in pid uts ipc; do readlink /proc/self/ns/$n; done; hostname").stdout.split()
    assert out[:3] == [own["pid"], own["uts"], own["ipc"]]
    assert out[3] == os.uname().nodename
    private = docker("run", "--rm", "busybox", "readlink", "/proc/self/ns/pid").stdout.strip()
    assert private != own["pid"]
    both = docker("run", "--rm", "--uts", "host", "--hostname", "x", "busybox", "true", check=False)
    assert both.returncode != 0 and "Conflicting options: hostname and the UTS mode" in both.stderr
    other = docker("run", "--rm", "--pid", "container:nope", "busybox", "true", check=False)
    assert other.returncode != 0 and "not supported" in other.stderr


def test_exec_that_cannot_start_is_126_top_takes_ps_args_and_ps_s_has_virtual_size(docker: Docker) -> None:
    name = unique("par")
    docker("run", "-d", "--name", name, "busybox", "sleep", "600")
    missing = docker("exec", name, "/nonexistent", check=False)
    assert missing.returncode == 126 and "/nonexistent" in missing.stderr
    top = docker("top", name, "-o", "pid,comm").stdout.splitlines()
    assert top[0].split() == ["PID", "COMMAND"] and top[1].split()[1] == "sleep" and len(top) == 2
    bad = docker("top", name, "-o", "comm", check=False)
    assert bad.returncode != 0 and "Couldn't find PID field in ps output" in bad.stderr
    docker("exec", name, "sh", "-c", "head -c 100000 /dev/zero > /big")
    size = docker("ps", "-s", "--filter", f"name={name}", "--format", "{{.Size}}").stdout.strip()
    assert size.startswith("100kB (virtual ") and size.endswith("MB)"), size


def test_tmpfs_defaults_to_noexec_and_takes_flag_words(docker: Docker) -> None:
    """Docker mounts --tmpfs noexec,nosuid,nodev unless the options say otherwise."""
    script = "printf '#!/bin/sh\\necho RAN\\n' > /t/x; chmod +x /t/x; /t/x; grep ' /t ' /proc/mounts"
    default = docker("run", "--rm", "--tmpfs", "/t", "busybox", "sh", "-c", script, check=False).stdout
    assert "RAN" not in default and "noexec" in default and "nosuid" in default and "nodev" in default
    allowed = docker("run", "--rm", "--tmpfs", "/t:exec,size=1m", "busybox", "sh", "-c", script).stdout
    assert "RAN" in allowed and "noexec" not in allowed and "size=1024k" in allowed
    bad = docker("run", "--rm", "--tmpfs", "/t:bogus", "busybox", "true", check=False)
    assert bad.returncode != 0 and "invalid tmpfs option 'bogus'" in bad.stderr
