"""Helpers shared by the client compatibility tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from typing import Callable

from harness import Daemon

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
            except socket.timeout:
                break
            if not data:
                break
            out += data
            if not read_until_close and b"\r\n\r\n" in out:
                break
        return out


def env_for(daemon: Daemon) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": daemon.host}
