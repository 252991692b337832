"""Healthchecks: HEALTHCHECK and --health-* probes, run as execs of this engine.

Why this shape: a probe is an `exec` into the running container (so it gets
the container's namespaces, cgroups, user and confinement, exactly as Docker
runs it), scheduled by one thread for all containers and run by a small pool,
so that a healthcheck costs no process per container between probes. Results
follow moby's rules (daemon/health.go): a success makes the container
healthy; failures count towards `Retries` except during the start period
while it has never been healthy; the last five results are kept with at most
4096 bytes of output each; a change of status is a `health_status` event.
The state lives in the container record, so it survives a daemon restart and
probing resumes when the daemon re-adopts the container.
"""

from __future__ import annotations

import heapq
import logging
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coracle import clock
from coracle.engine.container import Container, Health
from coracle.errors import CoracleError, InvalidParameter
from coracle.runtime.client import MAX_PACKET, split_frames

if TYPE_CHECKING:
    from coracle.engine.engine import Engine

log = logging.getLogger("coracle.health")

NS = 1_000_000_000
MIN_DURATION = 1_000_000  # 1ms, Docker's minimum for every healthcheck duration
MAX_OUTPUT = 4096
MAX_LOG = 5
START_GRACE = 30.0  # seconds an exec may take to start before the probe counts as failed
DEFAULTS = {"Interval": 30 * NS, "Timeout": 30 * NS, "StartPeriod": 0, "StartInterval": 5 * NS, "Retries": 3}


def merge(config: dict[str, Any] | None, image: dict[str, Any] | None) -> dict[str, Any] | None:
    """The container's healthcheck over the image's: unset fields come from the image (as Docker)."""
    if not config:
        return dict(image) if image else None
    merged = dict(config)
    for key, value in (image or {}).items():
        if not merged.get(key):
            merged[key] = value
    return merged


def validate(check: dict[str, Any] | None) -> None:
    """Docker's create-time checks, with its messages."""
    if not check:
        return
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval"):
        value = check.get(key) or 0
        if value != 0 and value < MIN_DURATION:
            raise InvalidParameter(f"{key} in Healthcheck cannot be less than 1ms")
    if (check.get("Retries") or 0) < 0:
        raise InvalidParameter("Retries in Healthcheck cannot be negative")


@dataclass(frozen=True)
class Probe:
    """How to probe one container, with Docker's defaults applied."""

    args: list[str]
    interval: float
    timeout: float
    start_period: float
    start_interval: float
    retries: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> Probe | None:
        """None when the container has no healthcheck or `NONE` disables the image's."""
        check = config.get("Healthcheck") or {}
        test = check.get("Test") or []
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        if not test or test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2:
            return None
        args = list(test[1:])
        if test[0] == "CMD-SHELL":
            args = [*(config.get("Shell") or ["/bin/sh", "-c"]), " ".join(args)]

        def seconds(key: str) -> float:
            return float(check.get(key) or DEFAULTS[key]) / NS

        return cls(args, seconds("Interval"), seconds("Timeout"), seconds("StartPeriod"), seconds("StartInterval"),
                   int(check.get("Retries") or DEFAULTS["Retries"]))


def go_duration(seconds: float) -> str:
    """Go's Duration.String() (300ms, 30s, 1m30s), as Docker prints durations in probe results."""
    ns = round(seconds * NS)

    def trim(value: float) -> str:
        return f"{value:.9f}".rstrip("0").rstrip(".")

    if ns < 1000:
        return f"{ns}ns" if ns else "0s"
    if ns < 1_000_000:
        return trim(ns / 1000) + "µs"
    if ns < NS:
        return trim(ns / 1_000_000) + "ms"
    hours, rest = divmod(ns, 3600 * NS)
    minutes, rest = divmod(rest, 60 * NS)
    text = trim(rest / NS) + "s"
    if hours or minutes:
        text = f"{minutes}m" + text
    return f"{hours}h" + text if hours else text


def starting() -> Health:
    """The health state of a container that has just started."""
    return Health("starting")


class HealthChecker:
    """Schedules every running container's probes on one thread; runs them on a small pool."""

    def __init__(self, engine: Engine, workers: int = 4) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="health")
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, str]] = []  # (monotonic due time, generation, container id)
        self._watched: dict[str, tuple[int, Probe, float]] = {}  # id -> generation, probe, started (epoch)
        self._generation = 0
        self._closed = False
        threading.Thread(target=self._schedule, name="health-scheduler", daemon=True).start()

    def watch(self, c: Container) -> None:
        """Start probing a running container (a new start, a restart, or one re-adopted after a restart)."""
        probe = Probe.of(c.config)
        if probe is None or c.state.paused:
            return
        started = clock.epoch(c.state.started_at)
        with self._cond:
            self._generation += 1
            self._watched[c.id] = (self._generation, probe, started)
            self._push(c.id, self._generation, probe, started)

    def forget(self, cid: str) -> None:
        """The container stopped, was paused or removed: no more probes (one in flight is ignored)."""
        with self._cond:
            self._watched.pop(cid, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _push(self, cid: str, generation: int, probe: Probe, started: float) -> None:
        """Schedule the next probe: start interval while starting within the start period."""
        elapsed = time.time() - started
        delay = probe.interval
        if elapsed < probe.start_period:
            delay = min(probe.interval, probe.start_period - elapsed)
            c = self.engine.record(cid)
            if c is not None and c.state.health is not None and c.state.health.status == "starting":
                delay = min(delay, probe.start_interval)
        heapq.heappush(self._due, (time.monotonic() + delay, generation, cid))
        self._cond.notify()

    def _schedule(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._due and self._due[0][0] <= now:
                    _, generation, cid = heapq.heappop(self._due)
                    if self._watched.get(cid, (None,))[0] == generation:
                        self._pool.submit(self._run, cid, generation)
                    continue
                self._cond.wait(self._due[0][0] - now if self._due else None)

    def _run(self, cid: str, generation: int) -> None:
        with self._cond:
            entry = self._watched.get(cid)
        if entry is None or entry[0] != generation:
            return
        _, probe, started = entry
        begun = time.time()
        try:
            code, output = self._probe(cid, probe)
        except CoracleError as exc:
            code, output = -1, str(exc)
        except Exception as exc:  # a probe must never kill the scheduler; the result says what broke
            log.exception("health probe of %s failed", cid)
            code, output = -1, str(exc)
        result = {"Start": clock.timestamp(int(begun * NS)), "End": clock.timestamp(), "ExitCode": code,
                  "Output": output}
        with self._cond:
            if self._watched.get(cid, (None,))[0] != generation:
                return  # stopped meanwhile: Docker drops such a result too
        self._record(cid, result, begun - started < probe.start_period, probe.retries)
        with self._cond:
            if self._watched.get(cid, (None,))[0] == generation:
                self._push(cid, generation, probe, started)

    def _probe(self, cid: str, probe: Probe) -> tuple[int, str]:
        """Run the probe as an exec; its exit code and up to 4096 bytes of its output."""
        execs = self.engine.execs
        exec_id = execs.create(cid, {"Cmd": probe.args, "User": self.engine.container(cid).config.get("User") or "",
                                     "AttachStdout": True, "AttachStderr": True})
        streams: list[socket.socket] = []
        try:
            execs.start(exec_id, lambda _ex: streams.append(self.engine.monitor.attach(exec_id, stdin=False)[0]))
            output, timed_out = _collect(streams[0], probe.timeout) if streams else (b"", False)
            if timed_out:
                execs.kill(exec_id, signal.SIGKILL)
                text = output.decode(errors="replace")
                limit = go_duration(probe.timeout)
                return -1, f"Health check exceeded timeout ({limit})" + (f": {text}" if text else "")
            code = execs.wait(exec_id, START_GRACE)["ExitCode"]
            return (code if code is not None else -1), output.decode(errors="replace")
        finally:
            for sock in streams:
                sock.close()
            execs.discard(exec_id)

    def _record(self, cid: str, result: dict[str, Any], in_start_period: bool, retries: int) -> None:
        engine = self.engine
        with engine._lock_for(cid):
            c = engine.record(cid)
            if c is None or not c.state.running:
                return
            health = c.state.health or starting()
            before = health.status
            health.log = [*health.log, result][-MAX_LOG:]
            if result["ExitCode"] == 0:
                health.status, health.failing_streak = "healthy", 0
            elif not (before == "starting" and in_start_period):
                health.failing_streak += 1
                if health.failing_streak >= retries:
                    health.status = "unhealthy"
            c.state.health = health
            engine.save(c)
        if health.status != before:
            engine.announce(c, f"health_status: {health.status}")


def _collect(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Read an exec's output stream until it ends or `timeout` passes: (output, timed out).

    The monitor sends packets b"o" + multiplexed frames, then b"e" when the
    process is gone; anything else (or nothing) means the stream was cut.
    """
    deadline = time.monotonic() + timeout
    buf, out, truncated = b"", b"", False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return _clip(out, truncated), True
        sock.settimeout(left)
        try:
            packet = sock.recv(MAX_PACKET)
        except TimeoutError:
            return _clip(out, truncated), True
        except OSError:
            packet = b""
        if packet[:1] != b"o":
            return _clip(out, truncated), False
        payloads, buf = split_frames(buf + packet[1:])
        for payload in payloads:
            room = MAX_OUTPUT - len(out)
            out += payload[:max(room, 0)]
            truncated = truncated or len(payload) > room


def _clip(out: bytes, truncated: bool) -> bytes:
    return out + b"..." if truncated else out
