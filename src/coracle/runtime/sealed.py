"""The interpreter that supervises containers runs from a sealed, private copy.

Why: every container process and every exec is forked by the monitor and does
its final `execve` from there, so until that `execve` (and through a
`#!/proc/self/exe` script or an image whose /bin/sh links to /proc/self/exe,
after it) `/proc/self/exe` names the monitor's executable. If that were the
host's interpreter, a container could open it and, once no other process ran
it, rewrite it (CVE-2019-5736, which runc answers the same way). So the
monitor is executed from a memfd holding a copy of the interpreter, sealed
against writes, growth and shrinking: what a container can reach through
/proc/self/exe is that copy, which no one can change and which nothing on the
host ever runs from its path again.

The copy is the interpreter's small executable only (its shared library and
standard library stay on the host, out of the container's reach), and one
copy serves every process started from this one.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import subprocess
import sys
import threading
from typing import Any, NoReturn

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_lock = threading.Lock()
_fd = -1


def interpreter_fd() -> int:
    """A close-on-exec memfd with a sealed copy of this interpreter, made once per process."""
    global _fd
    with _lock:
        if _fd < 0:
            fd = os.memfd_create("coracle-sealed-exe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            with open(os.path.realpath(sys.executable), "rb") as src:
                data = src.read()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            _fd = fd
        return _fd


def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`python ARGS` run from the sealed copy.

    argv[0] stays this interpreter's path so that Python finds its prefix and
    virtual environment as usual; the kernel executes the memfd, reached
    through this process's descriptor table (the child keeps no descriptor of
    it, so nothing it forks inherits one).
    """
    executable = f"/proc/{os.getpid()}/fd/{interpreter_fd()}"
    return subprocess.Popen([sys.executable, *args], executable=executable, **kwargs)


def supervisor_environment() -> dict[str, str]:
    """What the keeper and the monitor get of the daemon's environment: only what they need.

    The monitor's children carry this environment until they execute a
    container's program; the daemon's own variables (credentials, proxies,
    paths) have no business there.
    """
    keep = ("PYTHONPATH",)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    return env | {k: os.environ[k] for k in keep if k in os.environ}


def execute(args: list[str]) -> NoReturn:
    """Replace this process with `python ARGS` run from the sealed copy (after a fork)."""
    os.execve(f"/proc/self/fd/{interpreter_fd()}", [sys.executable, *args], supervisor_environment())


def scrub_process_strings() -> None:
    """Blank this process's command line and environment as /proc shows them.

    A forked child still carries the monitor's argv and environment (host
    paths, the daemon's variables) in its memory until it executes the
    container's program; wiping them leaves nothing to read through
    /proc/PID/cmdline or /proc/PID/environ in that window, on top of the
    child being non-dumpable.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # Fields 48-51 of proc(5) (arg_start, arg_end, env_start, env_end); `fields` starts at field 3.
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    for start, end in ((arg_start, arg_end), (env_start, env_end)):
        if end > start:
            ctypes.memset(start, 0, end - start)


def name_self(name: str) -> None:
    """Give this process a readable command name (ps, top, bench reports).

    The kernel names a process after the file it executes; executed through
    /proc/PID/fd/N that name is just the descriptor's number.
    """
    with open("/proc/self/comm", "w") as f:
        f.write(name[:15])
