"""Engine API routes for containers: /containers/...

Handlers translate HTTP to engine calls and back. Lifecycle calls block (netlink,
cgroups, the monitor): they run in a bounded pool of their own, so that they
never fill the threads other requests need. `ps` and `inspect` are answered on the
event loop from the engine's records in memory, and so never queue behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from coracle.api import filters as flt
from coracle.api import render
from coracle.api.backend import ContainerBackend, ContainerListing, EventSource, ImageBackend, StreamBackend
from coracle.api.http import Request, Response, Router
from coracle.api.shapes import HOST_CONFIG_SHAPE, check_shape, create_body
from coracle.api.streams import (
    CUT,
    CUT_MESSAGE,
    ENDED,
    RESUMED_MESSAGE,
    AttachHub,
    frame,
    parse_detach_keys,
    pump,
    reattach,
)
from coracle.engine import logs as logfile
from coracle.errors import Conflict, InvalidParameter, NotFound, NotImplemented_, NotModified

thread = asyncio.to_thread
LIFECYCLE_WORKERS = 8  # create, start, stop, rm... at once; more wait their turn, reads never do
RAW_STREAM, MULTIPLEXED_STREAM = "application/vnd.docker.raw-stream", "application/vnd.docker.multiplexed-stream"


def _waited(code: int) -> dict[str, Any]:
    """Docker's wait answer: the exit code, and `Error` null when waiting itself went fine."""
    return {"StatusCode": code, "Error": None}


def sizes(containers: ContainerListing, cid: str) -> dict[str, int]:
    """SizeRw (the writable layer) and SizeRootFs (that plus the image): `ps -s`'s "0B (virtual 1.98MB)"."""
    rw, rootfs = containers.size(cid)
    return {"SizeRw": rw, "SizeRootFs": rootfs}


class Lifecycle:
    """The pool lifecycle calls run in (like asyncio.to_thread, bounded)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=LIFECYCLE_WORKERS, thread_name_prefix="lifecycle")

    async def __call__(self, fn: Any, *args: Any) -> Any:
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)


class ContainerRouter:
    """Create, inspect, list and the lifecycle verbs of containers."""

    def __init__(self, containers: ContainerBackend, images: ImageBackend, hub: AttachHub,
                 lifecycle: Lifecycle) -> None:
        self.containers, self.images, self.hub, self.lifecycle = containers, images, hub, lifecycle
        self.rows = render.SummaryRows()

    def register(self, router: Router) -> None:
        r = router.add
        r("GET", "/containers/json", self.list_)
        r("POST", "/containers/create", self.create)
        r("POST", "/containers/prune", self.prune)
        r("GET", "/containers/{id}/json", self.inspect)
        r("POST", "/containers/{id}/start", self.start)
        r("POST", "/containers/{id}/stop", self.stop)
        r("POST", "/containers/{id}/restart", self.restart)
        r("POST", "/containers/{id}/kill", self.kill)
        r("POST", "/containers/{id}/pause", self.pause)
        r("POST", "/containers/{id}/unpause", self.unpause)
        r("DELETE", "/containers/{id*}", self.remove)  # a link is named /linker/alias
        r("POST", "/containers/{id}/rename", self.rename)
        r("POST", "/containers/{id}/update", self.update)
        r("GET", "/containers/{id}/top", self.top)

    async def list_(self, req: Request) -> Response:
        every = self.containers.containers()
        shown = flt.listed(req, every)
        if not req.qbool("size"):
            return Response(200, self.rows.listing(shown, every))
        return Response.json([render.summary(c, await thread(sizes, self.containers, c.id)) for c in shown])

    async def create(self, req: Request) -> Response:
        body = create_body(req.json())
        name = req.q("name")
        try:
            result = await self.lifecycle(self.containers.create, body, name or None)
        except NotFound as exc:
            # The CLI answers any 404 from create with a pull and a retry: only a missing
            # image may say 404 here; a missing network or donor container is a bad parameter.
            await thread(self.images.resolve, body.get("Image") or "")
            raise InvalidParameter(str(exc)) from None
        return Response.json(result, status=201)

    async def inspect(self, req: Request, id: str) -> Response:
        c = self.containers.container(id)
        out = render.inspect(c, self.containers.exec_ids(c.id), req.version)
        if req.qbool("size"):
            out.update(await thread(sizes, self.containers, c.id))
        return Response.json(out)

    async def start(self, req: Request, id: str) -> Response:
        started: list[str] = []

        def before_release(cid: str) -> None:
            started.append(cid)
            self.hub.connect_waiting(cid)

        try:
            await self.lifecycle(self.containers.start, id, before_release)
        except NotModified:
            return Response.empty(304)
        finally:
            for cid in started:
                self.hub.released(cid)
        return Response.empty(204)

    async def stop(self, req: Request, id: str) -> Response:
        try:
            t = req.qint("t", None) if req.q("t") is not None else req.qint("timeout", None)
            await self.lifecycle(self.containers.stop, id, t, req.q("signal"))
        except NotModified:
            return Response.empty(304)
        return Response.empty(204)

    async def restart(self, req: Request, id: str) -> Response:
        await self.lifecycle(self.containers.restart, id, req.qint("t", None) if req.q("t") is not None else None)
        return Response.empty(204)

    async def kill(self, req: Request, id: str) -> Response:
        await self.lifecycle(self.containers.kill, id, req.q("signal"))
        return Response.empty(204)

    async def pause(self, req: Request, id: str) -> Response:
        await self.lifecycle(self.containers.pause, id)
        return Response.empty(204)

    async def unpause(self, req: Request, id: str) -> Response:
        await self.lifecycle(self.containers.unpause, id)
        return Response.empty(204)

    async def remove(self, req: Request, id: str) -> Response:
        if req.qbool("link"):
            await self.lifecycle(self.containers.remove_link, id)
            return Response.empty(204)
        await self.lifecycle(self.containers.remove, id, req.qbool("force"), req.qbool("v"))
        return Response.empty(204)

    async def rename(self, req: Request, id: str) -> Response:
        name = req.q("name")
        if not name:
            raise InvalidParameter("name is required")
        await self.lifecycle(self.containers.rename, id, name)
        return Response.empty(204)

    async def update(self, req: Request, id: str) -> Response:
        body = req.json()
        check_shape(body, {k: v for k, v in HOST_CONFIG_SHAPE.items() if k not in ("LogConfig",)}, "")
        return Response.json(await self.lifecycle(self.containers.update, id, body))

    async def top(self, req: Request, id: str) -> Response:
        return Response.json(await thread(self.containers.top, id, req.q("ps_args") or ""))

    async def prune(self, req: Request) -> Response:
        filters = flt.parse(req.qjson("filters"))
        flt.check_container_filters(filters)
        deleted = []
        for c in self.containers.containers():
            if c.state.running or not flt.container_matches(c, filters):
                continue
            await self.lifecycle(self.containers.remove, c.id)
            deleted.append(c.id)
        return Response.json({"ContainersDeleted": deleted, "SpaceReclaimed": 0})


class ContainerStreamRouter:
    """What a container says over time: wait, logs, stats, attach (and the terminal's size)."""

    def __init__(self, containers: ContainerBackend, streams: StreamBackend, events: EventSource,
                 hub: AttachHub) -> None:
        self.containers, self.streams, self.events, self.hub = containers, streams, events, hub

    def register(self, router: Router) -> None:
        r = router.add
        r("POST", "/containers/{id}/wait", self.wait)
        r("GET", "/containers/{id}/logs", self.logs)
        r("GET", "/containers/{id}/stats", self.stats)
        r("POST", "/containers/{id}/attach", self.attach)
        r("POST", "/containers/{id}/resize", self.resize)

    async def wait(self, req: Request, id: str) -> Any:
        condition = req.q("condition") or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidParameter(f"invalid condition: {condition}")
        cid = self.containers.container(id).id
        sub = self.events.subscribe()  # before looking at the state, so no exit slips between
        try:
            state = self.containers.container(cid).state
        except NotFound:
            sub.close()
            if condition == "removed":
                return Response.json(_waited(0))
            raise
        if condition == "not-running" and not state.active:
            sub.close()
            return Response.json(_waited(state.exit_code))

        async def until_done(stream: Any) -> None:
            code = None
            try:
                while True:
                    ev = await sub.get()
                    if ev["Type"] != "container" or ev["Actor"]["ID"] != cid:
                        continue
                    if ev["Action"] == "die":
                        code = int(ev["Actor"]["Attributes"].get("exitCode", 0))
                        if condition != "removed":
                            break
                    elif ev["Action"] == "destroy":
                        break
            finally:
                sub.close()
            await stream.write(json.dumps(_waited(code or 0)).encode() + b"\n")

        return Response.stream(until_done, content_type="application/json")

    async def logs(self, req: Request, id: str) -> Any:
        c = self.containers.container(id)
        stdout, stderr = req.qbool("stdout"), req.qbool("stderr")
        if not stdout and not stderr:
            raise InvalidParameter("You must choose at least one stream")
        tail_text = req.q("tail") or "all"
        tail = None if tail_text == "all" else int(tail_text) if tail_text.lstrip("-").isdigit() else None
        since, until = logfile.parse_time(req.q("since")), logfile.parse_time(req.q("until"))
        timestamps, follow, details = req.qbool("timestamps"), req.qbool("follow"), req.qbool("details")
        if c.host_config.log_driver == "none":
            raise NotImplemented_("configured logging driver does not support reading")
        tty = c.tty
        path, driver = logfile.source(c)
        entries, offset = await thread(logfile.read, path, driver=driver, stdout=stdout, stderr=stderr,
                                       since=since, until=until, tail=tail)

        def encode(entry: dict[str, Any]) -> bytes:
            data = entry["log"].encode()
            if details:
                data = logfile.details(entry) + b" " + data
            if timestamps:
                data = entry["time"].encode() + b" " + data
            return data if tty else frame(1 if entry["stream"] == "stdout" else 2, data)

        async def produce(stream: Any) -> None:
            for entry in entries:
                await stream.write(encode(entry))
            if not follow or until is not None:
                return
            wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
            last_pass = False
            for followed in logfile.follow(path, offset, driver):
                if followed is None:
                    if last_pass:
                        return
                    # The monitor writes every byte before it reports the exit, so one more
                    # pass after seeing the container stopped gets the end of the output.
                    try:
                        last_pass = not self.containers.container(c.id).state.active
                    except NotFound:
                        last_pass = True
                    if not last_pass:
                        await asyncio.sleep(0.05)
                    continue
                if followed.get("stream") in wanted:
                    await stream.write(encode(followed))

        return Response.stream(produce, content_type=RAW_STREAM if tty else MULTIPLEXED_STREAM)

    async def stats(self, req: Request, id: str) -> Any:
        stream_mode = req.qbool("stream", True)
        one_shot = req.qbool("one-shot")

        async def produce(stream: Any) -> None:
            previous = None
            if not stream_mode and not one_shot:
                previous = await thread(self.containers.stats, id)
                await asyncio.sleep(0.5)
            while True:
                current = await thread(self.containers.stats, id)
                if previous is not None:
                    current["precpu_stats"] = previous.get("cpu_stats", {})
                    current["preread"] = previous["read"]
                else:
                    current["precpu_stats"] = {}
                await stream.write(json.dumps(current).encode() + b"\n")
                if not stream_mode:
                    return
                previous = current
                await asyncio.sleep(1)

        self.containers.container(id)
        return Response.stream(produce, content_type="application/json")

    async def attach(self, req: Request, id: str) -> Any:
        """Past output (`logs`), then the live streams (`stream`), as Docker's attach.

        Attaching to a stopped container with `stream` waits for its next start
        (that is how `docker run` and `start -a` see every byte); without
        `stream` only the logs are sent.
        """
        c = self.containers.container(id)
        cid = c.id
        want_in = req.qbool("stdin") and c.open_stdin
        want_out, want_err = req.qbool("stdout"), req.qbool("stderr")
        stream, logs = req.qbool("stream"), req.qbool("logs")
        detach = parse_detach_keys(req.q("detachKeys") or "")
        tty = c.tty
        connected: tuple[Any, bool] | None = None
        waiting = None
        if stream and c.state.running:
            connected = await thread(self.streams.attach, cid, want_in, want_out, want_err)
        elif stream:
            waiting = self.hub.wait(cid, want_in, want_out, want_err)  # connected when it starts
        await thread(self.containers.attached, cid)

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if logs:
                path, driver = logfile.source(c)
                entries, _ = await thread(logfile.read, path, driver=driver, stdout=want_out, stderr=want_err)
                # docker-py reads the 101 through a buffered reader, then switches to the raw
                # socket: bytes sent hard on the heels of the 101 would be lost in that buffer.
                await asyncio.sleep(0.05)
                for entry in entries:
                    data = entry["log"].encode()
                    writer.write(data if tty else frame(1 if entry["stream"] == "stdout" else 2, data))
                await writer.drain()
            gate = None
            if waiting is not None:
                try:
                    msock, is_tty = await waiting.ready
                finally:
                    self.hub.cancel(cid, waiting)
                gate = waiting.running
            elif connected is not None:
                msock, is_tty = connected
            else:
                return

            def notice(text: str) -> None:
                writer.write(text.encode() if is_tty else frame(2, text.encode()))

            while True:
                end = await pump(msock, reader, writer, stdin=want_in, stdin_once=c.stdin_once, tty=is_tty,
                                 detach_keys=detach, input_gate=gate)
                if end != CUT:
                    break
                resumed = await thread(reattach, self.streams, cid, want_in, want_out, want_err)
                if resumed is None:
                    notice(CUT_MESSAGE)
                    break
                msock, gate = resumed[0], None
                notice(RESUMED_MESSAGE)
            if end == ENDED:  # the output ends with the process: let its exit be recorded before the client hears EOF
                with contextlib.suppress(NotFound):  # removed on exit (--rm): recorded and gone
                    await thread(self.containers.wait_exit, cid, 5)

        return Response.hijack(session, content_type=RAW_STREAM if tty else MULTIPLEXED_STREAM)

    async def resize(self, req: Request, id: str) -> Response:
        c = self.containers.container(id)
        if not c.state.running:
            raise Conflict(f"Container {c.id} is not running")
        await thread(self.streams.resize, c.id, req.qint("h", 24), req.qint("w", 80))
        return Response.empty(200)
