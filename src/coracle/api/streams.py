"""Attach and exec streams: joining a hijacked client connection to the monitor.

Clients attach before they start (`docker run`, `docker start -a`): the hub
keeps those waiting attaches and connects them to the monitor in the engine's
`before_release` hook, after the process exists but before it runs user code,
so not one byte of output is missed. Input waits until the start is over
(`released`): a held process reads nothing, and stdin piped into it meanwhile
would fill its pipe while the monitor still has to release it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from coracle.errors import CoracleError
from coracle.api.backend import StreamBackend

DETACH_DEFAULT = b"\x10\x11"  # ctrl-p ctrl-q

# How a stream ended (see pump).
ENDED, DETACHED, CUT = "ended", "detached", "cut"
CUT_MESSAGE = ("coracle: the output stream was cut: the container monitor restarted. "
               "The process runs on; `docker logs` has the container's output.\n")
RESUMED_MESSAGE = ("coracle: the container monitor restarted and this stream resumed; "
                   "output written in between is in `docker logs`.\n")


@dataclass
class AttachRequest:
    stdin: bool
    stdout: bool
    stderr: bool
    loop: asyncio.AbstractEventLoop
    ready: asyncio.Future[tuple[socket.socket, bool]]  # (socket, tty) once it exists
    running: asyncio.Future[bool]  # set once the start is over


class AttachHub:
    """Attach requests waiting for their container (or exec) to start."""

    def __init__(self, monitor: StreamBackend) -> None:
        self.monitor = monitor
        self._lock = threading.Lock()
        self._waiting: dict[str, list[AttachRequest]] = {}
        self._held: dict[str, list[AttachRequest]] = {}

    def wait(self, key: str, stdin: bool, stdout: bool, stderr: bool) -> AttachRequest:
        loop = asyncio.get_running_loop()
        req = AttachRequest(stdin, stdout, stderr, loop, loop.create_future(), loop.create_future())
        with self._lock:
            self._waiting.setdefault(key, []).append(req)
        return req

    def cancel(self, key: str, req: AttachRequest) -> None:
        with self._lock:
            if req in self._waiting.get(key, []):
                self._waiting[key].remove(req)

    def released(self, key: str) -> None:
        """The start of `key` is over (run or failed): input may flow to the attaches it connected."""
        with self._lock:
            held = self._held.pop(key, [])
        for req in held:
            req.loop.call_soon_threadsafe(_resolve, req.running, True)

    def connect_waiting(self, key: str) -> None:
        """Engine hook (worker thread): the process is held; connect every waiting attach."""
        with self._lock:
            waiting = self._waiting.pop(key, [])
            self._held.setdefault(key, []).extend(waiting)
        for req in waiting:
            try:
                result: Any = self.monitor.attach(key, req.stdin, req.stdout, req.stderr)
            except Exception as exc:  # the waiting client gets the error, the start goes on
                result = exc
            req.loop.call_soon_threadsafe(_resolve, req.ready, result)


def _resolve(fut: asyncio.Future, result: Any) -> None:
    if fut.done():
        if isinstance(result, tuple):
            result[0].close()
        return
    if isinstance(result, Exception):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def reattach(monitor: StreamBackend, key: str, stdin: bool, stdout: bool, stderr: bool
             ) -> tuple[socket.socket, bool] | None:
    """After a cut: the same stream from the monitor the keeper started instead; None if the process is gone.

    The client waits for the new monitor while the keeper lives (MonitorClient._connect).
    """
    try:
        return monitor.attach(key, stdin, stdout, stderr)
    except (OSError, CoracleError):  # it ended meanwhile, or no monitor came back
        return None


def parse_detach_keys(spec: str) -> bytes:
    """Docker's --detach-keys: "ctrl-p,ctrl-q", "a,ctrl-c"."""
    if not spec:
        return DETACH_DEFAULT
    out = bytearray()
    for key in spec.split(","):
        key = key.strip().lower()
        if key.startswith("ctrl-") and len(key) == 6:
            c = key[5]
            letter = ord(c) - ord("a") + 1 if c.isalpha() else 0
            out.append({"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}.get(c, letter))
        elif len(key) == 1:
            out.append(ord(key))
    return bytes(out) or DETACH_DEFAULT


async def pump(
    msock: socket.socket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
    stdin: bool, stdin_once: bool, tty: bool, detach_keys: bytes = DETACH_DEFAULT,
    input_gate: asyncio.Future | None = None,
) -> str:
    """Copy output monitor -> client and input client -> monitor until the output ends.

    The client may half-close its side at stdin EOF: output keeps flowing until
    the process ends. Detach keys (TTY only) end the stream, not the process.
    Input is read from the client only once `input_gate` is done. Returns
    ENDED when the process is gone, DETACHED on detach or when the client went
    away, CUT when the monitor went away mid-stream (its packets are b"o" +
    output, then b"e" at the end).
    """
    loop = asyncio.get_running_loop()
    msock.setblocking(False)
    detached = asyncio.Event()

    async def output() -> str:
        while True:
            try:
                data = await loop.sock_recv(msock, 1 << 20)
            except OSError:
                return CUT
            if data[:1] != b"o":
                return ENDED if data == b"e" else CUT
            writer.write(data[1:])
            await writer.drain()

    async def input_() -> None:
        if input_gate is not None:
            await input_gate
        matched = 0
        while True:
            data = await reader.read(65536)
            if not data:
                if stdin_once:
                    await loop.sock_sendall(msock, b"c")
                return
            if tty and detach_keys:
                for i, byte in enumerate(data):
                    matched = matched + 1 if byte == detach_keys[matched] else (1 if byte == detach_keys[0] else 0)
                    if matched == len(detach_keys):
                        head = data[: i + 1 - len(detach_keys)]
                        if head:
                            await loop.sock_sendall(msock, b"d" + head)
                        detached.set()
                        return
            await loop.sock_sendall(msock, b"d" + data)

    out_task = asyncio.ensure_future(output())
    in_task = asyncio.ensure_future(input_()) if stdin else None
    detach_task = asyncio.ensure_future(detached.wait())
    try:
        await asyncio.wait([out_task, detach_task], return_when=asyncio.FIRST_COMPLETED)
    except (ConnectionError, OSError):
        pass
    finally:
        for task in (out_task, in_task, detach_task):
            if task is not None and not task.done():
                task.cancel()
        msock.close()
    if out_task.done() and not out_task.cancelled() and out_task.exception() is None and not detached.is_set():
        return out_task.result()
    return DETACHED


def frame(stream: int, data: bytes) -> bytes:
    """Docker's multiplexed-stream frame: [stream, 0, 0, 0, size uint32 BE] + payload."""
    return struct.pack(">BxxxI", stream, len(data)) + data
