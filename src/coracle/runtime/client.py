"""The daemon's side of the monitor protocol (see runtime/monitor.py).

Each request uses its own connection, so calls from the daemon's worker
threads never interleave; a spawn keeps its connection until the matching
release, which is also how the monitor knows whom to answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from typing import Any, Iterator

from coracle.errors import CoracleError, SystemError_
from coracle.runtime import sealed
from coracle.runtime.spec import Spec

MAX_PACKET = 1 << 20


def monitor_environment() -> dict[str, str]:
    """What the monitor inherits of the daemon's environment: only what it needs to run.

    Its children carry this environment until they execute a container's
    program; the daemon's own variables (credentials, proxies, paths) have
    no business there.
    """
    keep = ("PYTHONPATH",)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    return env | {k: os.environ[k] for k in keep if k in os.environ}


class StartError(CoracleError):
    """The container's process could not be started (bad command, bad mount...)."""

    status = 400

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class MonitorClient:
    def __init__(self, exec_root: str) -> None:
        self.exec_root = exec_root
        self.path = os.path.join(exec_root, "monitor", "monitor.sock")

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.connect(self.path)
        return sock

    @staticmethod
    def _call(sock: socket.socket, req: dict[str, Any], timeout: float | None = 30) -> dict[str, Any]:
        sock.settimeout(timeout)
        sock.send(json.dumps(req).encode())
        raw = sock.recv(MAX_PACKET)
        if not raw:
            raise SystemError_("the container monitor closed the connection")
        return json.loads(raw)

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        with self._connect() as sock:
            return self._call(sock, req)

    def ping(self) -> dict[str, Any] | None:
        try:
            return self.request({"op": "ping"})
        except OSError:
            return None

    def ensure_running(self, timeout: float = 10) -> int:
        """Start the monitor if none answers; return its PID. It outlives this daemon."""
        answer = self.ping()
        if answer:
            return answer["pid"]
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        log = open(os.path.join(self.exec_root, "monitor", "monitor.log"), "ab")
        sealed.popen(
            ["-m", "coracle.runtime.monitor", "--exec-root", self.exec_root],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            env=monitor_environment(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.ping()
            if answer:
                return answer["pid"]
            time.sleep(0.01)
        raise SystemError_("the container monitor did not start (see monitor.log in the exec root)")

    def spawn(self, spec: Spec) -> tuple[socket.socket, int]:
        """Fork the container's (or exec's) process and hold it; returns the open request and its PID."""
        sock = self._connect()
        try:
            answer = self._call(sock, {"op": "spawn", "spec": spec.to_json()})
        except BaseException:
            sock.close()
            raise
        if "pid" not in answer:
            sock.close()
            raise StartError(answer.get("error", "cannot start process"), answer.get("code", 128))
        return sock, answer["pid"]

    def release(self, sock: socket.socket, id_: str) -> None:
        """Let the held process build its rootfs and exec; raise StartError if it could not."""
        try:
            answer = self._call(sock, {"op": "release", "id": id_}, timeout=60)
        finally:
            sock.close()
        if not answer.get("ok"):
            raise StartError(answer.get("error", "cannot start process"), answer.get("code", 128))

    def abandon(self, sock: socket.socket | None, id_: str) -> None:
        """Kill a held process whose start failed on the daemon's side."""
        try:
            self.request({"op": "abandon", "id": id_})
        finally:
            if sock is not None:
                sock.close()

    def attach(self, id_: str, stdin: bool, stdout: bool = True, stderr: bool = True) -> tuple[socket.socket, bool]:
        """An output stream of the process (frames as Docker sends them) and its TTY flag."""
        sock = self._connect()
        answer = self._call(sock, {"op": "attach", "id": id_, "stdin": stdin, "stdout": stdout, "stderr": stderr})
        if not answer.get("ok"):
            sock.close()
            raise CoracleError(answer.get("error", "cannot attach"))
        sock.settimeout(None)
        return sock, bool(answer.get("tty"))

    def resize(self, id_: str, height: int, width: int) -> None:
        answer = self.request({"op": "resize", "id": id_, "h": height, "w": width})
        if not answer.get("ok"):
            raise CoracleError(answer.get("error", "cannot resize"))

    def close_stdin(self, id_: str) -> None:
        self.request({"op": "close_stdin", "id": id_})

    def list(self) -> list[dict[str, Any]]:
        return self.request({"op": "list"})["procs"]

    def events(self) -> Iterator[dict[str, Any]]:
        """Exit events from now on (subscribed before returning), until the monitor goes away."""
        sock = self._connect()
        self._call(sock, {"op": "subscribe"})
        sock.settimeout(None)

        def stream() -> Iterator[dict[str, Any]]:
            with sock:
                while raw := sock.recv(MAX_PACKET):
                    yield json.loads(raw)

        return stream()

    def exit_records(self) -> list[dict[str, Any]]:
        """Exits recorded while nobody was listening (daemon down)."""
        folder = os.path.join(self.exec_root, "monitor", "exits")
        out = []
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.endswith(".json"):
                try:
                    with open(os.path.join(folder, name)) as f:
                        out.append(json.load(f))
                except (OSError, ValueError):
                    continue
        return out

    def forget_exit(self, id_: str) -> None:
        try:
            os.unlink(os.path.join(self.exec_root, "monitor", "exits", f"{id_}.json"))
        except FileNotFoundError:
            pass
