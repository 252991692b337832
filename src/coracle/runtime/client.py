"""The daemon's side of the monitor protocol (see runtime/monitor.py).

Each request uses its own connection, so calls from the daemon's worker
threads never interleave; a spawn keeps its connection until the matching
release, which is also how the monitor knows whom to answer. The daemon
starts the keeper (runtime/keeper.py), which starts and restarts the monitor.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import struct
import subprocess
import time
from typing import Any, TypeVar
from collections.abc import Callable, Iterator

from coracle.errors import CoracleError, SystemError_
from coracle.runtime import exits, sealed
from coracle.runtime.spec import Spec

MAX_PACKET = 1 << 20
RESTART_WAIT = 10.0  # seconds a request waits for the monitor that a live keeper is restarting
NO_MONITOR = (FileNotFoundError, ConnectionRefusedError)  # connecting while no monitor listens
T = TypeVar("T")


class StartError(CoracleError):
    """The container's process could not be started (bad command, bad mount...)."""

    status = 400

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class MonitorClosed(SystemError_):
    """The monitor closed a connection before it answered: it died while we asked."""


class MonitorClient:
    def __init__(self, exec_root: str) -> None:
        self.exec_root = exec_root
        self.path = os.path.join(exec_root, "monitor", "monitor.sock")

    def _connect(self, wait: bool = True) -> socket.socket:
        """A connection to the monitor; while the keeper lives, wait for the monitor it is restarting."""
        def connected(sock: socket.socket) -> socket.socket:
            sock.connect(self.path)
            return sock
        return self._while_restarting(connected, NO_MONITOR, wait)

    def _while_restarting(self, attempt: Callable[[socket.socket], T], gone: tuple[type[Exception], ...],
                          wait: bool) -> T:
        """`attempt` on a new socket; with `wait`, again after a `gone` error while the keeper lives."""
        deadline = time.monotonic() + RESTART_WAIT
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                return attempt(sock)
            except gone:
                sock.close()
                if not wait or time.monotonic() > deadline or not self._keeper_alive():
                    raise
            except BaseException:
                sock.close()
                raise
            time.sleep(0.05)

    def _keeper_alive(self) -> bool:
        """A keeper runs for this exec root (it restarts the monitor: no need for another)."""
        pid = self.keeper_pid()
        if not pid:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                running = f.read().rsplit(")", 1)[1].split()[0] != "Z"
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return running and b"coracle.runtime.keeper" in f.read()  # not a reused pid
        except (OSError, IndexError):
            return False

    @staticmethod
    def _call(sock: socket.socket, req: dict[str, Any], timeout: float | None = 30) -> dict[str, Any]:
        sock.settimeout(timeout)
        sock.send(json.dumps(req).encode())
        raw = sock.recv(MAX_PACKET)
        if not raw:
            raise MonitorClosed("the container monitor closed the connection")
        answer: dict[str, Any] = json.loads(raw)
        return answer

    def request(self, req: dict[str, Any], wait: bool = True) -> dict[str, Any]:
        sock, answer = self._asked(req, wait)
        sock.close()
        return answer

    def _asked(self, req: dict[str, Any], wait: bool = True) -> tuple[socket.socket, dict[str, Any]]:
        """A connection and the monitor's answer on it to an idempotent request.

        A monitor killed just as we connect can take the connection into its
        backlog and then drop it unanswered (reset or closed): with `wait`, the
        monitor its keeper starts next is asked again.
        """
        def asked(sock: socket.socket) -> tuple[socket.socket, dict[str, Any]]:
            sock.connect(self.path)
            return sock, self._call(sock, req)
        return self._while_restarting(asked, (*NO_MONITOR, ConnectionResetError, MonitorClosed), wait)

    def ping(self) -> dict[str, Any] | None:
        """The monitor's answer now, or None: never waits for one."""
        try:
            return self.request({"op": "ping"}, wait=False)
        except OSError:
            return None

    def ensure_running(self, timeout: float = 10) -> int:
        """Start the keeper (which starts the monitor) if no monitor answers; return the monitor's PID.

        Both outlive this daemon. A keeper that is alive is restarting its monitor:
        then this just waits for the answer.
        """
        answer = self.ping()
        if answer:
            return int(answer["pid"])
        if not self._keeper_alive():
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(os.path.join(self.exec_root, "monitor", "monitor.log"), "ab") as log:
                sealed.popen(
                    ["-m", "coracle.runtime.keeper", "--exec-root", self.exec_root],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                    env=sealed.supervisor_environment(),
                )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.ping()
            if answer:
                return int(answer["pid"])
            time.sleep(0.01)
        raise SystemError_("the container monitor did not start (see monitor.log in the exec root)")

    def stage_spare(self, dirs: list[str]) -> bool:
        """Ask the spare child to move itself into the cgroup `dirs` (coracle.cgroups.spare); False when
        there is no spare, it has a cgroup already, or the monitor predates this request. No `dirs`:
        only whether the spare wants a cgroup."""
        try:
            return self.request({"op": "stage", "dirs": dirs}, wait=False).get("ok") is True
        except (OSError, ValueError):
            return False

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
        sock, answer = self._asked({"op": "attach", "id": id_, "stdin": stdin, "stdout": stdout, "stderr": stderr})
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
        procs: builtins.list[dict[str, Any]] = self.request({"op": "list"})["procs"]
        return procs

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

    def exit_records(self) -> builtins.list[dict[str, Any]]:
        """Exits recorded and not yet applied (the daemon was down, frozen or dropped)."""
        return exits.read_all(self.exec_root)

    def forget_exit(self, id_: str) -> None:
        exits.forget(self.exec_root, id_)

    def keeper_pid(self) -> int | None:
        try:
            with open(os.path.join(self.exec_root, "monitor", "keeper.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Payloads of the complete multiplexed frames in buffer, and the incomplete rest."""
    payloads, offset = [], 0
    while len(buffer) - offset >= 8:
        size = struct.unpack(">I", buffer[offset + 4:offset + 8])[0]
        if len(buffer) - offset - 8 < size:
            break
        payloads.append(buffer[offset + 8:offset + 8 + size])
        offset += 8 + size
    return payloads, buffer[offset:]
