"""Helpers shared by the client compatibility tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable

from harness import Daemon
import contextlib

Docker = Callable[..., subprocess.CompletedProcess]


def inspect(docker: Docker, ref: str) -> dict:
    return json.loads(docker("inspect", ref).stdout)[0]


def raw(daemon: Daemon, request: bytes, read_until_close: bool = True, timeout: float = 10) -> bytes:
    """Send raw bytes on the API socket; the whole answer (until the server closes or times out)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(daemon.sock)
        s.sendall(request)
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            out += data
            if not read_until_close and b"\r\n\r\n" in out:
                break
        return out


def env_for(daemon: Daemon) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": daemon.host}


class Terminal:
    """A docker (or `program`: coracle) command on a pseudo-terminal, driven like a user at a keyboard."""

    def __init__(self, daemon: Daemon, *args: str, rows: int = 24, cols: int = 80, program: str = "docker") -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: docker with the pty as its controlling terminal
            try:
                os.execvpe(program, [program, *args], env_for(daemon))
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.output = b""
        self.seen = 0  # read_until looks only after its previous match
        self.code: int | None = None

    def read_until(self, token: bytes, timeout: float = 15) -> bytes:
        """Read until `token` shows up after the previous match; returns the text up to it."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while token not in self.output[self.seen:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{token!r} not seen; terminal shows {self.output[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the other side is gone
                    data = b""
                if not data:
                    raise AssertionError(f"{token!r} not seen before EOF; terminal shows {self.output[-2000:]!r}")
                self.output += data
        start = self.seen
        self.seen = self.output.index(token, start) + len(token)
        return self.output[start:self.seen]

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def resize(self, rows: int, cols: int) -> None:
        import fcntl
        import signal
        import struct
        import termios

        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)

    def wait(self, timeout: float = 15) -> int:
        """The exit code of docker (reading the rest of the output meanwhile)."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"docker did not exit; terminal shows {self.output[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:
                    time.sleep(0.02)
        return self.code

    def close(self) -> None:
        import signal

        if self.code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.code = -9
        with contextlib.suppress(OSError):
            os.close(self.fd)
