"""Engine API routes for exec: POST /containers/{id}/exec and /exec/..."""

from __future__ import annotations

import asyncio
from typing import Any

from coracle.api.backend import ExecBackend, StreamBackend
from coracle.api.containers import MULTIPLEXED_STREAM, RAW_STREAM
from coracle.api.http import Request, Response, Router
from coracle.api.shapes import EXEC_SHAPE, check_shape
from coracle.api.streams import CUT, CUT_MESSAGE, AttachHub, frame, parse_detach_keys, pump
from coracle.errors import InvalidParameter

thread = asyncio.to_thread


class ExecRouter:
    def __init__(self, execs: ExecBackend, streams: StreamBackend, hub: AttachHub) -> None:
        self.execs, self.streams, self.hub = execs, streams, hub

    def register(self, router: Router) -> None:
        router.add("POST", "/containers/{id}/exec", self.create)
        router.add("POST", "/exec/{id}/start", self.start)
        router.add("GET", "/exec/{id}/json", self.inspect)
        router.add("POST", "/exec/{id}/resize", self.resize)

    async def create(self, req: Request, id: str) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise InvalidParameter("exec config must be a JSON object")
        check_shape(body, EXEC_SHAPE, "")
        return Response.json({"Id": await thread(self.execs.create, id, body)}, status=201)

    async def start(self, req: Request, id: str) -> Any:
        body = req.json() if req.body else {}
        check_shape(body, {"Detach": "bool", "Tty": "bool", "ConsoleSize": "ints"}, "")
        ex = self.execs.get(id)
        self.execs.size_console(id, body.get("ConsoleSize"))
        if body.get("Detach"):
            await thread(self.execs.start, id, None)
            return Response.empty(200)
        tty = bool(body.get("Tty", ex["ProcessConfig"]["tty"]))
        waiting = self.hub.wait(id, ex["OpenStdin"], ex["OpenStdout"], ex["OpenStderr"])

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await thread(self.execs.start, id, lambda _ex: self.hub.connect_waiting(id))
                msock, is_tty = await waiting.ready
            except Exception as exc:
                self.hub.cancel(id, waiting)
                message = str(exc) + "\r\n"
                writer.write(message.encode() if tty else frame(2, message.encode()))
                return
            finally:
                self.hub.released(id)
            end = await pump(msock, reader, writer, stdin=ex["OpenStdin"], stdin_once=True, tty=is_tty,
                             detach_keys=parse_detach_keys(ex.get("DetachKeys") or ""), input_gate=waiting.running)
            if end == CUT and (await thread(self.execs.wait, id, 1))["ExitCode"] is None:
                # still running after a second, or its end unknown: the monitor went away mid-stream
                # (a process that ended while its stream was being set up has its exit code by now)
                self.execs.stream_cut(id)
                writer.write(CUT_MESSAGE.encode() if is_tty else frame(2, CUT_MESSAGE.encode()))
                return
            await thread(self.execs.wait, id, 5)

        return Response.hijack(session, content_type=RAW_STREAM if tty else MULTIPLEXED_STREAM)

    async def inspect(self, req: Request, id: str) -> Response:
        ex = self.execs.get(id)
        return Response.json({**ex, "Pid": ex["Pid"]})

    async def resize(self, req: Request, id: str) -> Response:
        self.execs.get(id)
        await thread(self.streams.resize, id, req.qint("h", 24), req.qint("w", 80))
        return Response.empty(200)
