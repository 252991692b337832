"""Build steps as containers of this engine.

A RUN is an ordinary container (created, started and waited for through the
engine, so it gets the namespaces, cgroup, seccomp profile, default
capabilities and network mode of any container); COPY/ADD write into a created,
never started, container through the engine's archive path, which does the
writing confined to that container's root. Either way the step's layer is the
container's overlay upper directory, and the container is removed afterwards,
also when the build fails or is cancelled.
"""

from __future__ import annotations

import socket
import struct
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from coracle.errors import CoracleError, NotFound

BUILD_LABEL = "coracle.build"  # marks step containers (removed at daemon start if a build died with it)
Emit = Callable[[dict[str, Any]], None]


class BuildCancelled(CoracleError):
    """The client went away: the build stops and leaves nothing behind."""


class StepContainer:
    def __init__(self, engine: Any, image_id: str, config: dict[str, Any], host_config: dict[str, Any],
                 build_id: str) -> None:
        self.engine = engine
        body = {**config, "Image": image_id, "HostConfig": host_config,
                "Labels": {**(config.get("Labels") or {}), BUILD_LABEL: build_id}}
        self.id: str = engine.create(body)["Id"]

    @property
    def upper_dir(self) -> str:
        return str(self.engine.get(self.id)["GraphDriver"]["Data"]["UpperDir"])

    def run(self, emit: Emit, stopping: Callable[[], bool]) -> int:
        """Start it, stream its output as build progress, and return its exit code."""
        attached: list[socket.socket] = []

        def before_release(rec: dict[str, Any]) -> None:
            attached.append(self.engine.monitor.attach(rec["Id"], False, True, True)[0])

        self.engine.start(self.id, before_release)
        sock = attached[0]
        sock.settimeout(0.2)
        buffer = b""
        try:
            while True:
                if stopping():
                    raise BuildCancelled("the build was cancelled")
                try:
                    data = sock.recv(1 << 16)
                except socket.timeout:
                    continue
                if not data:
                    break
                payloads, buffer = _split_frames(buffer + data)
                for payload in payloads:
                    emit({"stream": payload.decode("utf-8", errors="replace")})
        finally:
            sock.close()
        while (code := self.engine.wait_exit(self.id, 0.2)) is None:
            if stopping():
                raise BuildCancelled("the build was cancelled")
        return code

    def remove(self) -> None:
        try:
            self.engine.remove(self.id, force=True)
        except NotFound:
            pass


@contextmanager
def step_container(engine: Any, image_id: str, config: dict[str, Any], host_config: dict[str, Any],
                   build_id: str) -> Iterator[StepContainer]:
    container = StepContainer(engine, image_id, config, host_config, build_id)
    try:
        yield container
    finally:
        container.remove()


def _split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Payloads of the complete multiplexed frames in buffer, and the incomplete rest."""
    payloads, offset = [], 0
    while len(buffer) - offset >= 8:
        size = struct.unpack(">I", buffer[offset + 4:offset + 8])[0]
        if len(buffer) - offset - 8 < size:
            break
        payloads.append(buffer[offset + 8:offset + 8 + size])
        offset += 8 + size
    return payloads, buffer[offset:]


def remove_leftovers(engine: Any) -> list[str]:
    """Step containers of builds that died with a previous daemon."""
    gone = []
    for rec in engine.records():
        if BUILD_LABEL in (rec["Config"].get("Labels") or {}):
            try:
                engine.remove(rec["Id"], force=True)
                gone.append(rec["Id"])
            except CoracleError:
                pass
    return gone
