"""A container process spying on execs: nothing of the host is visible or writable.

Every exec is forked by the monitor (the host's Python), joins the container's
namespaces and only then executes the program. Two attacks on that window,
each held open deterministically by the container itself with a FIFO where
the exec or the loader reads a file:

- while the joining process waits on the container's /etc/group, another
  container process reads its /proc/PID/environ, cmdline and exe;
- `exec c /proc/self/exe` (directly, through a symlink the image ships, or as
  a `#!` interpreter) makes the kernel execute whatever the monitor runs from;
  while the loader waits on the interpreter's shared library, the container
  looks at /proc/PID/exe and tries to write through it (CVE-2019-5736).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from typing import Any

import docker
import pytest


FIND_JOINER = r"""
find_joiner() {  # a process that joined from outside (its parent is not in here), named $1 if given
  while :; do
    for d in /proc/[0-9]*; do
      [ "$d" = /proc/1 ] || [ "$d" = /proc/$$ ] && continue
      grep -q '^PPid:[[:space:]]*0$' $d/status 2>/dev/null || continue
      [ -z "$1" ] || grep -q "^Name:[[:space:]]*$1\$" $d/status 2>/dev/null && { J=$d; return; }
    done
    usleep 10000
  done
}
"""


def _wait_for(ctr: Any, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = ctr.logs().decode(errors="replace")
        if text in logs:
            return logs
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the container's output:\n{ctr.logs().decode()}")


def _exec_in_background(ctr: Any, cmd: list[str]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["out"] = ctr.exec_run(cmd)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _line(output: str, label: str) -> str:
    return output.split(f"{label}> ", 1)[1].split("\n", 1)[0]


def _host_markers() -> list[str]:
    """Strings that only the host's side of an exec could show."""
    return [sys.prefix, os.path.realpath(sys.executable), "coracle.runtime", "python"]


def test_a_joining_exec_shows_no_environment_cmdline_or_interpreter(client: docker.DockerClient) -> None:
    script = FIND_JOINER + """
mv /etc/group /etc/group.real && mkfifo /etc/group && echo armed
find_joiner
echo "ENVIRON> $( (tr '\\0' ' ' < $J/environ) 2>&1)"
echo "CMDLINE> $( (tr '\\0' ' ' < $J/cmdline) 2>&1)"
echo "EXE> $(ls -ln $J/exe 2>&1 | tr "\\n" " ")"
echo "FD> $(ls -ln $J/fd/ 2>&1 | tr "\\n" " ")"
cat /etc/group.real > /etc/group; rm /etc/group; mv /etc/group.real /etc/group
echo released; exec sleep 600
"""
    ctr = client.containers.run("busybox", ["sh", "-c", script], detach=True)
    try:
        _wait_for(ctr, "armed")
        thread, result = _exec_in_background(ctr, ["true"])
        logs = _wait_for(ctr, "released")
        thread.join(30)
        assert result.get("out") is not None and result["out"].exit_code == 0, result
        seen = logs.split("armed", 1)[1]
        for marker in _host_markers():
            assert marker not in seen, f"the container saw {marker!r}:\n{seen}"
        for what in ("ENVIRON", "EXE", "FD"):
            assert "Permission denied" in _line(seen, what), seen
    finally:
        ctr.remove(force=True)


def _interpreter_libraries() -> list[str]:
    """The shared libraries the interpreter's loader opens, in its order (the loader itself last)."""
    out = subprocess.run(["ldd", os.path.realpath(sys.executable)], capture_output=True, text=True,
                         check=True).stdout
    return [m.group(1) for m in re.finditer(r"^\s*(?:\S+ => )?(/\S+) \(", out, re.M)]


def _held_library() -> str:
    """The first library the loader opens for the interpreter (a shared libpython where there is
    one, else libm or the like): a FIFO in its place holds the exec'd interpreter in the loader."""
    libs = [p for p in _interpreter_libraries() if "ld-linux" not in p and "/libc.so" not in p]
    if not libs:
        pytest.skip("the interpreter needs no shared library the loader could be held on")
    return libs[0]


def _loader_archive(held: str) -> bytes:
    """The dynamic loader and C libraries the interpreter needs but `held`, as a tar for a container."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(set(_interpreter_libraries()) - {held}):
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    return buf.getvalue()


@pytest.mark.parametrize("how", ["direct", "symlink", "shebang"])
def test_proc_self_exe_reaches_no_host_binary(client: docker.DockerClient, how: str) -> None:
    lib = _held_library()
    host = os.stat(os.path.realpath(sys.executable))
    target = {"direct": "/proc/self/exe", "symlink": "/bin/evil", "shebang": "/bin/evil.sh"}[how]
    name = os.path.basename(target)  # the command name the kernel gives the executed interpreter
    script = FIND_JOINER + f"""
ln -s /proc/self/exe /bin/evil; printf '#!/proc/self/exe\\n' > /bin/evil.sh; chmod +x /bin/evil.sh
mkdir -p {os.path.dirname(lib)} && mkfifo {lib} && echo armed
find_joiner {name}
echo "IDENT> $(stat -L -c '%d:%i' $J/exe 2>&1)"
echo "LINK> $(readlink $J/exe 2>&1)"
(echo overwritten >> $J/exe) 2>/dev/null && echo "write: WROTE" || echo "write: refused"
echo junk > {lib}; rm {lib}
echo released; exec sleep 600
"""
    ctr = client.containers.run("busybox", ["sh", "-c", "until [ -e /go ]; do usleep 10000; done; " + script],
                                detach=True)
    try:
        ctr.put_archive("/", _loader_archive(lib))  # an image may ship any loader and libc it likes
        ctr.exec_run(["touch", "/go"])
        _wait_for(ctr, "armed")
        thread, result = _exec_in_background(ctr, [target])
        logs = _wait_for(ctr, "released")
        thread.join(30)
        assert result.get("out") is not None and result["out"].exit_code != 0, result
        seen = logs.split("armed", 1)[1]
        ident = _line(seen, "IDENT")
        assert ident != f"{host.st_dev}:{host.st_ino}", "the container holds the host's interpreter"
        assert "write: refused" in seen
        for marker in _host_markers():
            assert marker not in _line(seen, "LINK")
    finally:
        ctr.remove(force=True)
