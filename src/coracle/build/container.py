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

import logging
import os
import secrets
import socket
from contextlib import contextmanager, suppress
from typing import Any
from collections.abc import Callable, Iterator

from coracle.build.errors import BuildCancelled
from coracle.errors import CoracleError, NotFound
from coracle.runtime.client import MAX_PACKET, split_frames

log = logging.getLogger("coracle.build")
BUILD_LABEL = "coracle.build"  # marks step containers: `ps --filter label=coracle.build`
LEDGER = "containers"  # in a build's work directory: the step containers it has not let go of
Emit = Callable[[dict[str, Any]], None]


class StepContainer:
    """One step's container. Its name is written to the build's ledger before it exists, so
    a daemon that dies mid-build leaves nothing the next one does not find and remove."""

    def __init__(self, engine: Any, image_id: str, config: dict[str, Any], host_config: dict[str, Any],
                 build_id: str, ledger: str) -> None:
        self.engine = engine
        name = f"build-{build_id[:12]}-{secrets.token_hex(6)}"
        os.makedirs(ledger, exist_ok=True)
        self.entry = os.path.join(ledger, name)
        open(self.entry, "w").close()
        body = {**config, "Image": image_id, "HostConfig": host_config,
                "Labels": {**(config.get("Labels") or {}), BUILD_LABEL: build_id}}
        try:
            self.id: str = engine.create(body, name)["Id"]
        except BaseException:
            os.unlink(self.entry)
            raise

    @property
    def upper_dir(self) -> str:
        return str(self.engine.container(self.id).layers.upper)

    def run(self, emit: Emit, stopping: Callable[[], bool]) -> int:
        """Start it, stream its output as build progress, and return its exit code. The monitor's
        stream is packets: b"o" + multiplexed frames, then b"e" when the process is gone."""
        attached: list[socket.socket] = []

        def before_release(cid: str) -> None:
            attached.append(self.engine.monitor.attach(cid, False, True, True)[0])

        self.engine.start(self.id, before_release)
        sock = attached[0]
        sock.settimeout(0.2)
        buffer = b""
        try:
            while True:
                if stopping():
                    raise BuildCancelled("the build was cancelled")
                try:
                    packet = sock.recv(MAX_PACKET)
                except TimeoutError:
                    continue
                if packet[:1] != b"o":  # b"e": the process ended; nothing: the stream was cut
                    break
                payloads, buffer = split_frames(buffer + packet[1:])
                for payload in payloads:
                    emit({"stream": payload.decode("utf-8", errors="replace")})
        finally:
            sock.close()
        while (code := self.engine.wait_exit(self.id, 0.2)) is None:
            if stopping():
                raise BuildCancelled("the build was cancelled")
        return code

    def remove(self) -> None:
        with suppress(NotFound):
            self.engine.remove(self.id, force=True)
        self.let_go()

    def let_go(self) -> None:
        """The container is the user's now (kept as Docker keeps them), or gone: off the ledger."""
        with suppress(FileNotFoundError):
            os.unlink(self.entry)


@contextmanager
def step_container(engine: Any, image_id: str, config: dict[str, Any], host_config: dict[str, Any],
                   build_id: str, ledger: str,
                   keep: Callable[[BaseException | None], bool] = lambda error: False) -> Iterator[StepContainer]:
    """A step container, removed afterwards unless keep(the step's error, or None) says otherwise."""
    container = StepContainer(engine, image_id, config, host_config, build_id, ledger)
    error: BaseException | None = None
    try:
        yield container
    except BaseException as exc:
        error = exc
        raise
    finally:
        if keep(error):
            container.let_go()
        else:
            container.remove()


def remove_leftovers(engine: Any, work_dir: str) -> list[str]:
    """Step containers on the ledger of a build that died with a previous daemon."""
    gone = []
    for name in os.listdir(os.path.join(work_dir, LEDGER)) if os.path.isdir(os.path.join(work_dir, LEDGER)) else []:
        try:
            engine.remove(name, force=True)
            gone.append(name)
        except NotFound:
            pass
        except CoracleError:
            log.exception("could not remove the step container %s of an interrupted build", name)
    return gone
