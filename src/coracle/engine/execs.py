"""`docker exec`: extra processes in a running container's namespaces and cgroups.

An exec instance is created (validated, not yet run), started through the
monitor like a container's first process (held, then released so attach
streams connect first), and finished by the monitor's exit event. Instances
live in memory: Docker keeps them only while the daemon runs, too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Protocol
from collections.abc import Callable

from coracle.engine import config as cfg
from coracle.engine import security_options
from coracle.errors import Conflict, InvalidParameter, NotFound, SystemError_
from coracle import cgroups
from coracle.cgroups import spare
from coracle.engine.container import Container
from coracle.runtime.client import MonitorClient, StartError
from coracle.runtime.spec import Process, Spec



class ContainerHost(Protocol):
    """What execs need of the engine, named here so that this module does not import engine.py."""

    monitor: MonitorClient
    no_new_privileges: bool
    spare_cgroup: spare.Stager

    def running(self, ref: str, for_: str = "") -> Container: ...
    def record(self, cid: str) -> Container | None: ...
    def cgroup(self, c: Container) -> cgroups.Manager: ...
    def announce(self, c: Container, action: str, **extra: str) -> None: ...

EXEC_START_FAILED = 126


class Execs:
    def __init__(self, engine: ContainerHost) -> None:
        self.engine = engine
        self.records: dict[str, dict[str, Any]] = {}
        self._done: dict[str, threading.Event] = {}
        self._failed: set[str] = set()

    def __contains__(self, exec_id: str) -> bool:
        return exec_id in self.records

    def of_container(self, cid: str) -> list[str]:
        return [e["ID"] for e in self.records.values() if e["ContainerID"] == cid]

    def create(self, ref: str, body: dict[str, Any]) -> str:
        c = self.engine.running(ref)
        if c.state.paused:
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
        cmd = cfg.strings(body.get("Cmd"), "Cmd")
        if not cmd:
            raise InvalidParameter("No exec command specified")
        exec_id = cfg.new_id()
        self.records[exec_id] = {
            "ID": exec_id, "ContainerID": c.id, "Running": False, "ExitCode": None, "Pid": 0,
            "OpenStdin": bool(body.get("AttachStdin")), "OpenStdout": bool(body.get("AttachStdout", True)),
            "OpenStderr": bool(body.get("AttachStderr", True)), "CanRemove": False,
            "DetachKeys": body.get("DetachKeys") or "",
            "ProcessConfig": {"tty": bool(body.get("Tty")), "entrypoint": cmd[0], "arguments": cmd[1:],
                              "privileged": bool(body.get("Privileged")), "user": body.get("User") or ""},
            "Env": cfg.strings(body.get("Env"), "Env") or [], "WorkingDir": cfg.working_dir(body.get("WorkingDir")),
            "ConsoleSize": cfg.console_size(body.get("ConsoleSize")),
        }
        self.engine.announce(c, "exec_create: " + " ".join(cmd), execID=exec_id)
        return exec_id

    def get(self, exec_id: str) -> dict[str, Any]:
        ex = self.records.get(exec_id)
        if ex is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return ex

    def size_console(self, exec_id: str, size: Any) -> None:
        """The first size of the exec's terminal, as a start request gives it (over the create's)."""
        if size is not None:
            self.get(exec_id)["ConsoleSize"] = cfg.console_size(size)

    def start(self, exec_id: str, before_release: Callable[[dict[str, Any]], None] | None = None) -> None:
        ex = self.get(exec_id)
        if ex["Running"] or ex["ExitCode"] is not None:
            raise Conflict(f"exec {exec_id} has already been started")
        engine = self.engine
        c = engine.running(ex["ContainerID"])
        pc = ex["ProcessConfig"]
        process = Process(
            args=[pc["entrypoint"], *pc["arguments"]], env=cfg.merge_env(c.config["Env"], ex["Env"]),
            cwd=ex["WorkingDir"] or c.config["WorkingDir"] or "/", user=pc["user"] or c.config["User"],
            tty=pc["tty"], stdin=ex["OpenStdin"], console_size=ex.get("ConsoleSize"),
        )
        spec = Spec(id=exec_id, kind="exec", process=process, target_pid=c.state.pid,
                    cgroup_dirs=engine.cgroup(c).dirs())
        privileged = c.host_config.privileged or pc["privileged"]
        security_options.apply(spec, {**c.host_config.raw, "Privileged": privileged}, engine.no_new_privileges)
        ex["Running"] = True
        self._done[exec_id] = threading.Event()
        try:
            sock, pid = engine.monitor.spawn(spec)
            ex["Pid"] = pid
            try:
                security_options.set_oom_score_adj(pid, c.host_config.raw)
            except SystemError_ as exc:
                engine.monitor.abandon(sock, exec_id)
                raise StartError(str(exc), 126) from None
            if before_release:
                before_release(ex)
            engine.monitor.release(sock, exec_id)
            engine.spare_cgroup.soon()  # this exec took the spare child
        except StartError as exc:
            # Docker records 126 for any exec that could not be started (a missing binary included);
            # 127 is `run`'s code for a missing command, not exec's.
            ex.update({"Running": False, "ExitCode": EXEC_START_FAILED})
            self._failed.add(exec_id)
            done = self._done.pop(exec_id, None)  # the exit may have been reported first
            if done:
                done.set()
            raise StartError(f"OCI runtime exec failed: {exc}", EXEC_START_FAILED) from None
        engine.announce(c, "exec_start: " + " ".join(process.args), execID=exec_id)

    def stream_cut(self, exec_id: str) -> None:
        """The client's stream broke before the process ended (the monitor died).

        Its client must not read success from a cut-off run: until the real exit
        arrives (the keeper still reaps it and a new monitor reports it), the
        exec reports 255, "unknown".
        """
        ex = self.records.get(exec_id)
        if ex is not None and ex["ExitCode"] is None:
            ex["ExitCode"] = 255

    def exited(self, event: dict[str, Any]) -> None:
        """The monitor reaped an exec'd process (or its exit record was found)."""
        self.engine.monitor.forget_exit(event["id"])
        ex = self.records.get(event["id"])
        if ex is None or event["id"] in self._failed:
            return  # a process that never got to run: its start error already set the code
        code = event["exit_code"]
        ex.update({"Running": False, "ExitCode": 255 if code is None else code})
        done = self._done.pop(event["id"], None)
        if done:
            done.set()
        c = self.engine.record(ex["ContainerID"])
        if c is not None:
            self.engine.announce(c, "exec_die", execID=ex["ID"], exitCode=str(event["exit_code"]))

    def kill(self, exec_id: str, sig: int) -> None:
        """Signal a running exec and what it started (a probe past its timeout).

        Each exec leads its own session and process group, so the group is the
        exec's whole tree, short of what deliberately left it.
        """
        ex = self.get(exec_id)
        if ex["Running"] and ex["Pid"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ex["Pid"], sig)

    def discard(self, exec_id: str) -> None:
        """Forget a finished exec the engine ran for itself (healthcheck probes)."""
        self.records.pop(exec_id, None)
        self._done.pop(exec_id, None)
        self._failed.discard(exec_id)

    def wait(self, exec_id: str, timeout: float | None = None) -> dict[str, Any]:
        done = self._done.get(exec_id)
        if done:
            done.wait(timeout)
        return self.get(exec_id)
