"""Engine API routes for containers and exec: /containers/..., /exec/...

Handlers translate HTTP to engine calls and back. Lifecycle calls block (netlink,
cgroups, the monitor): they run in a bounded pool of their own, so that they
never fill the threads other requests need. `ps` and `inspect` are answered on the
event loop from the engine's records in memory, and so never queue behind them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from coracle import clock
from coracle.api import filters as flt
from coracle.api.archive import routes as archive_routes
from coracle.api.http import Request, Response, Router
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
from coracle.disk import usage as disk_usage
from coracle.engine import logs as logfile
from coracle.engine.engine import Engine
from coracle.errors import Conflict, InvalidParameter, NotFound, NotImplemented_, NotModified

thread = asyncio.to_thread
LIFECYCLE_WORKERS = 8  # create, start, stop, rm... at once; more wait their turn, reads never do


def summary(engine: Engine, rec: dict[str, Any], size: bool = False) -> dict[str, Any]:
    """One element of GET /containers/json (docker ps)."""
    state = rec["State"]
    ports = []
    for key, bindings in (rec["NetworkSettings"].get("Ports") or {}).items():
        number, _, proto = key.partition("/")
        for b in bindings or [{}]:
            entry = {"PrivatePort": int(number), "Type": proto or "tcp"}
            if b.get("HostPort"):
                entry.update({"IP": b.get("HostIp") or "0.0.0.0", "PublicPort": int(b["HostPort"])})
            ports.append(entry)
    image = rec["Config"].get("Image", "")
    out = {
        "Id": rec["Id"], "Names": [rec["Name"]], "Image": image, "ImageID": rec["Image"],
        "Command": command_line(rec["Path"], rec["Args"]), "Created": _epoch(rec["Created"]),
        "Ports": ports, "Labels": rec["Config"].get("Labels") or {}, "State": state["Status"],
        "Status": status_text(state), "HostConfig": {"NetworkMode": rec["HostConfig"].get("NetworkMode", "")},
        "NetworkSettings": {"Networks": rec["NetworkSettings"].get("Networks") or {}},
        "Mounts": rec["Mounts"],
    }
    if size:
        out.update(sizes(engine, rec))
    return out


def command_line(path: str, args: list[str]) -> str:
    """The list's Command as Docker writes it: arguments holding a space in single quotes."""
    return " ".join([path, *(f"'{a}'" if " " in a else a for a in args)])


def sizes(engine: Engine, rec: dict[str, Any]) -> dict[str, int]:
    """SizeRw (the writable layer) and SizeRootFs (that plus the image): `ps -s`'s "0B (virtual 1.98MB)"."""
    rw = disk_usage(rec["GraphDriver"]["Data"]["UpperDir"])
    try:
        image_size = engine.images.resolve(rec["Image"]).size
    except NotFound:
        image_size = 0
    return {"SizeRw": rw, "SizeRootFs": rw + image_size}


def _epoch(stamp: str) -> int:
    return int(clock.epoch(stamp))


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 1:
        return "Less than a second"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size * (2 if unit != "day" else 1):
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    if seconds >= 60:
        return "About a minute"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _waited(code: int) -> dict[str, Any]:
    """Docker's wait answer: the exit code, and `Error` null when waiting itself went fine."""
    return {"StatusCode": code, "Error": None}


def status_text(state: dict[str, Any]) -> str:
    """Docker's human status: "Up 3 seconds", "Exited (0) 2 minutes ago", "Created"."""
    now = time.time()
    if state.get("Restarting"):
        return f"Restarting ({state['ExitCode']}) {_ago(now - _epoch(state['FinishedAt']))} ago"
    if state["Running"]:
        text = f"Up {_ago(now - _epoch(state['StartedAt']))}"
        if state["Paused"]:
            return text + " (Paused)"
        health = (state.get("Health") or {}).get("Status")
        if health:
            return f"{text} ({'health: starting' if health == 'starting' else health})"
        return text
    if state["Status"] == "created":
        return "Created"
    if state["Status"] == "removing":
        return "Removal In Progress"
    return f"Exited ({state['ExitCode']}) {_ago(now - _epoch(state['FinishedAt']))} ago"


# The JSON shapes of request bodies, as Docker's Go decoder enforces them: a
# wrong type is a 400 naming the field, null is always allowed (Go's zero
# value), unknown fields are ignored (newer clients send fields we lack).
# Tokens: str, bool, int, obj (any object), strs (list of strings),
# strslice (a string or a list of strings), labels (object of strings),
# objs (list of objects), ints; a dict is an object with known fields and
# [dict] a list of such objects.
_PORTS = "ports"
CONFIG_SHAPE: dict[str, Any] = {
    **dict.fromkeys(("Hostname", "Domainname", "User", "Image", "WorkingDir", "MacAddress", "StopSignal"), "str"),
    **dict.fromkeys(("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce",
                     "NetworkDisabled", "ArgsEscaped"), "bool"),
    "ExposedPorts": "obj", "Volumes": "obj", "Env": "strs",
    "Healthcheck": {"Test": "strslice", "Interval": "int", "Timeout": "int", "StartPeriod": "int",
                    "StartInterval": "int", "Retries": "int"}, "OnBuild": "strs",
    "Shell": "strs", "Cmd": "strslice", "Entrypoint": "strslice", "Labels": "labels", "StopTimeout": "int",
}
HOST_CONFIG_SHAPE: dict[str, Any] = {
    **dict.fromkeys(("ContainerIDFile", "NetworkMode", "VolumeDriver", "CgroupnsMode", "IpcMode", "Cgroup",
                     "PidMode", "UTSMode", "UsernsMode", "Runtime", "Isolation", "CgroupParent", "CpusetCpus",
                     "CpusetMems"), "str"),
    **dict.fromkeys(("AutoRemove", "Privileged", "PublishAllPorts", "ReadonlyRootfs", "OomKillDisable", "Init"),
                    "bool"),
    **dict.fromkeys(("OomScoreAdj", "ShmSize", "CpuShares", "Memory", "NanoCpus", "BlkioWeight", "CpuPeriod",
                     "CpuQuota", "CpuRealtimePeriod", "CpuRealtimeRuntime", "KernelMemory", "KernelMemoryTCP",
                     "MemoryReservation", "MemorySwap", "MemorySwappiness", "PidsLimit", "CpuCount", "CpuPercent",
                     "IOMaximumIOps", "IOMaximumBandwidth"), "int"),
    **dict.fromkeys(("Binds", "VolumesFrom", "CapAdd", "CapDrop", "Dns", "DnsOptions", "DnsSearch", "ExtraHosts",
                     "GroupAdd", "Links", "SecurityOpt", "DeviceCgroupRules", "MaskedPaths", "ReadonlyPaths"),
                    "strs"),
    **dict.fromkeys(("BlkioDeviceReadBps", "BlkioDeviceWriteBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteIOps"),
                    [{"Path": "str", "Rate": "int"}]),
    "BlkioWeightDevice": [{"Path": "str", "Weight": "int"}], "DeviceRequests": "objs",
    "Devices": [{"PathOnHost": "str", "PathInContainer": "str", "CgroupPermissions": "str"}],
    "Ulimits": [{"Name": "str", "Soft": "int", "Hard": "int"}],
    "Mounts": [{"Type": "str", "Source": "str", "Target": "str", "ReadOnly": "bool", "Consistency": "str",
                "BindOptions": "obj", "VolumeOptions": "obj", "TmpfsOptions": "obj"}],
    "LogConfig": {"Type": "str", "Config": "labels"}, "RestartPolicy": {"Name": "str", "MaximumRetryCount": "int"},
    "PortBindings": _PORTS, "Tmpfs": "labels", "Sysctls": "labels", "StorageOpt": "labels",
    "Annotations": "labels", "ConsoleSize": "ints",
}
CREATE_SHAPE: dict[str, Any] = {**CONFIG_SHAPE, "HostConfig": HOST_CONFIG_SHAPE,
                                "NetworkingConfig": {"EndpointsConfig": "endpoints"}}
ENDPOINT_SHAPE: dict[str, Any] = {"IPAMConfig": {"IPv4Address": "str", "IPv6Address": "str", "LinkLocalIPs": "strs"},
                                  "Links": "strs", "Aliases": "strs", "MacAddress": "str", "DriverOpts": "labels",
                                  "NetworkID": "str", "EndpointID": "str", "IPAddress": "str", "DNSNames": "strs"}
EXEC_SHAPE: dict[str, Any] = {
    **dict.fromkeys(("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "Privileged", "Detach"), "bool"),
    **dict.fromkeys(("User", "WorkingDir", "DetachKeys"), "str"),
    "Cmd": "strslice", "Env": "strs", "ConsoleSize": "ints",
}

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "an array",
               dict: "an object"}


def check_shape(value: Any, shape: Any, where: str) -> None:
    """Refuse a body whose fields have the wrong JSON types, naming the first such field."""
    if value is None:
        return

    def wrong(expected: str) -> InvalidParameter:
        got = _TYPE_NAMES.get(type(value), type(value).__name__)
        return InvalidParameter(f"invalid {where or 'request body'}: expected {expected}, got {got}")

    def is_str_list(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise wrong("an object")
        for key, sub in shape.items():
            if key in value:
                check_shape(value[key], sub, f"{where}.{key}" if where else key)
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise wrong("an array")
        for i, item in enumerate(value):
            check_shape(item, shape[0], f"{where}[{i}]")
    elif shape == "str" and not isinstance(value, str):
        raise wrong("a string")
    elif shape == "bool" and not isinstance(value, bool):
        raise wrong("a boolean")
    elif shape == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise wrong("an integer")
    elif shape == "obj" and not isinstance(value, dict):
        raise wrong("an object")
    elif shape == "strs" and not is_str_list(value):
        raise wrong("an array of strings")
    elif shape == "strslice" and not (isinstance(value, str) or is_str_list(value)):
        raise wrong("a string or an array of strings")
    elif shape == "labels" and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
        raise wrong("an object of strings")
    elif shape == "objs" and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
        raise wrong("an array of objects")
    elif shape == "ints" and not (isinstance(value, list) and all(type(v) is int for v in value)):
        raise wrong("an array of integers")
    elif shape == _PORTS:
        if not isinstance(value, dict):
            raise wrong("an object")
        for port, bindings in value.items():
            if bindings is not None and not (isinstance(bindings, list) and all(isinstance(b, dict) for b in bindings)):
                raise InvalidParameter(f"invalid {where}[{port!r}]: expected an array of port bindings")
            for b in bindings or []:
                check_shape(b, {"HostIp": "str", "HostPort": "str"}, f"{where}[{port!r}]")
    elif shape == "endpoints":
        if not isinstance(value, dict):
            raise wrong("an object")
        for name, endpoint in value.items():
            check_shape(endpoint, ENDPOINT_SHAPE, f"{where}[{name!r}]")


def create_body(body: Any) -> dict[str, Any]:
    """A create request as clients send it, in the shape the engine reads.

    The docker CLI names the default network "default" both as NetworkMode and
    as the key of its endpoint settings; both mean the bridge network.
    """
    if not isinstance(body, dict):
        raise InvalidParameter("the container config must be a JSON object")
    check_shape(body, CREATE_SHAPE, "")
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig")
    if endpoints and "default" in endpoints:
        endpoints["bridge"] = endpoints.pop("default")
    return body


def routes(router: Router, engine: Engine, hub: AttachHub) -> None:
    """Register every container and exec route on the router."""
    pool = ThreadPoolExecutor(max_workers=LIFECYCLE_WORKERS, thread_name_prefix="lifecycle")

    async def lifecycle(fn: Any, *args: Any) -> Any:
        """Like asyncio.to_thread, in the lifecycle pool."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def list_(req: Request) -> Response:
        filters = flt.parse(req.qjson("filters"))
        flt.check_container_filters(filters)
        records = engine.views()
        show_all = req.qbool("all")
        limit = req.qint("limit", -1)
        if req.qbool("latest"):
            limit = 1
        out = []
        for rec in sorted(records, key=lambda r: r["Created"], reverse=True):
            if not show_all and not rec["State"]["Running"] and limit <= 0 and "status" not in filters:
                continue
            if filters and not flt.container_matches(rec, filters):
                continue
            out.append(await thread(summary, engine, rec, True) if req.qbool("size") else summary(engine, rec))
        if limit > 0:
            out = out[:limit]
        return Response.json(out)

    async def create(req: Request) -> Response:
        body = create_body(req.json())
        name = req.q("name")
        try:
            result = await lifecycle(engine.create, body, name or None)
        except NotFound as exc:
            # The CLI answers any 404 from create with a pull and a retry: only a missing
            # image may say 404 here; a missing network or donor container is a bad parameter.
            await thread(engine.images.resolve, body.get("Image") or "")
            raise InvalidParameter(str(exc)) from None
        return Response.json(result, status=201)

    async def inspect(req: Request, id: str) -> Response:
        out = engine.inspect(id)
        if req.qbool("size"):
            out.update(await thread(sizes, engine, out))
        return Response.json(out)

    async def start(req: Request, id: str) -> Response:
        started: list[str] = []

        def before_release(rec: dict[str, Any]) -> None:
            started.append(rec["Id"])
            hub.connect_waiting(rec["Id"])

        try:
            await lifecycle(engine.start, id, before_release)
        except NotModified:
            return Response.empty(304)
        finally:
            for cid in started:
                hub.released(cid)
        return Response.empty(204)

    async def stop(req: Request, id: str) -> Response:
        try:
            t = req.qint("t", None) if req.q("t") is not None else req.qint("timeout", None)
            await lifecycle(engine.stop, id, t, req.q("signal"))
        except NotModified:
            return Response.empty(304)
        return Response.empty(204)

    async def restart(req: Request, id: str) -> Response:
        await lifecycle(engine.restart, id, req.qint("t", None) if req.q("t") is not None else None)
        return Response.empty(204)

    async def kill(req: Request, id: str) -> Response:
        await lifecycle(engine.kill, id, req.q("signal"))
        return Response.empty(204)

    async def pause(req: Request, id: str) -> Response:
        await lifecycle(engine.pause, id)
        return Response.empty(204)

    async def unpause(req: Request, id: str) -> Response:
        await lifecycle(engine.unpause, id)
        return Response.empty(204)

    async def remove(req: Request, id: str) -> Response:
        if req.qbool("link"):
            await lifecycle(engine.remove_link, id)
            return Response.empty(204)
        await lifecycle(engine.remove, id, req.qbool("force"), req.qbool("v"))
        return Response.empty(204)

    async def rename(req: Request, id: str) -> Response:
        name = req.q("name")
        if not name:
            raise InvalidParameter("name is required")
        await lifecycle(engine.rename, id, name)
        return Response.empty(204)

    async def update(req: Request, id: str) -> Response:
        body = req.json()
        check_shape(body, {k: v for k, v in HOST_CONFIG_SHAPE.items() if k not in ("LogConfig",)}, "")
        return Response.json(await lifecycle(engine.update, id, body))

    async def top(req: Request, id: str) -> Response:
        return Response.json(await thread(engine.top, id, req.q("ps_args") or ""))

    async def wait(req: Request, id: str) -> Any:
        condition = req.q("condition") or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidParameter(f"invalid condition: {condition}")
        cid = (await thread(engine.get, id))["Id"]
        sub = engine.events.subscribe()  # before looking at the state, so no exit slips between
        rec = engine.store.get("container", cid)
        if rec is None:
            sub.close()
            if condition == "removed":
                return Response.json(_waited(0))
            raise NotFound(f"No such container: {id}")
        if condition == "not-running" and not rec["State"]["Running"] and not rec["State"].get("Restarting"):
            sub.close()
            return Response.json(_waited(rec["State"]["ExitCode"]))

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

    async def logs(req: Request, id: str) -> Any:
        rec = await thread(engine.get, id)
        stdout, stderr = req.qbool("stdout"), req.qbool("stderr")
        if not stdout and not stderr:
            raise InvalidParameter("You must choose at least one stream")
        tail_text = req.q("tail") or "all"
        tail = None if tail_text == "all" else int(tail_text) if tail_text.lstrip("-").isdigit() else None
        since, until = logfile.parse_time(req.q("since")), logfile.parse_time(req.q("until"))
        timestamps, follow, details = req.qbool("timestamps"), req.qbool("follow"), req.qbool("details")
        if (rec["HostConfig"].get("LogConfig") or {}).get("Type") == "none":
            raise NotImplemented_("configured logging driver does not support reading")
        tty = rec["Config"]["Tty"]
        path, driver = logfile.source(rec)
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
            cid = rec["Id"]
            wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
            last_pass = False
            for entry in logfile.follow(path, offset, driver):
                if entry is None:
                    if last_pass:
                        return
                    current = engine.store.get("container", cid)
                    # The monitor writes every byte before it reports the exit, so one more
                    # pass after seeing the container stopped gets the end of the output.
                    last_pass = current is None or not (current["State"]["Running"] or current["State"].get("Restarting"))
                    if not last_pass:
                        await asyncio.sleep(0.05)
                    continue
                if entry.get("stream") in wanted:
                    await stream.write(encode(entry))

        content = "application/vnd.docker.raw-stream" if tty else "application/vnd.docker.multiplexed-stream"
        return Response.stream(produce, content_type=content)

    async def stats(req: Request, id: str) -> Any:
        stream_mode = req.qbool("stream", True)
        one_shot = req.qbool("one-shot")

        async def produce(stream: Any) -> None:
            previous = None
            if not stream_mode and not one_shot:
                previous = await thread(engine.stats, id)
                await asyncio.sleep(0.5)
            while True:
                current = await thread(engine.stats, id)
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

        await thread(engine.get, id)
        return Response.stream(produce, content_type="application/json")

    async def attach(req: Request, id: str) -> Any:
        """Past output (`logs`), then the live streams (`stream`), as Docker's attach.

        Attaching to a stopped container with `stream` waits for its next start
        (that is how `docker run` and `start -a` see every byte); without
        `stream` only the logs are sent.
        """
        rec = await thread(engine.get, id)
        cid = rec["Id"]
        want_in = req.qbool("stdin") and rec["Config"]["OpenStdin"]
        want_out, want_err = req.qbool("stdout"), req.qbool("stderr")
        stream, logs = req.qbool("stream"), req.qbool("logs")
        detach = parse_detach_keys(req.q("detachKeys") or "")
        tty = rec["Config"]["Tty"]
        connected: tuple[Any, bool] | None = None
        waiting = None
        if stream and rec["State"]["Running"]:
            connected = await thread(engine.monitor.attach, cid, want_in, want_out, want_err)
        elif stream:
            waiting = hub.wait(cid, want_in, want_out, want_err)  # connected when it starts

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if logs:
                path, driver = logfile.source(rec)
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
                    hub.cancel(cid, waiting)
                gate = waiting.running
            elif connected is not None:
                msock, is_tty = connected
            else:
                return
            def notice(text: str) -> None:
                writer.write(text.encode() if is_tty else frame(2, text.encode()))

            while True:
                end = await pump(msock, reader, writer, stdin=want_in,
                                 stdin_once=rec["Config"].get("StdinOnce", False), tty=is_tty, detach_keys=detach,
                                 input_gate=gate)
                if end != CUT:
                    break
                resumed = await thread(reattach, engine.monitor, cid, want_in, want_out, want_err)
                if resumed is None:
                    notice(CUT_MESSAGE)
                    break
                msock, gate = resumed[0], None
                notice(RESUMED_MESSAGE)
            if end == ENDED:  # the output ends with the process: let its exit be recorded before the client hears EOF
                await thread(engine._wait_exit, cid, 5)

        content = "application/vnd.docker.raw-stream" if tty else "application/vnd.docker.multiplexed-stream"
        return Response.hijack(session, content_type=content)

    async def resize(req: Request, id: str) -> Response:
        rec = await thread(engine.get, id)
        if not rec["State"]["Running"]:
            raise Conflict(f"Container {rec['Id']} is not running")
        await thread(engine.monitor.resize, rec["Id"], req.qint("h", 24), req.qint("w", 80))
        return Response.empty(200)

    async def exec_create(req: Request, id: str) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise InvalidParameter("exec config must be a JSON object")
        check_shape(body, EXEC_SHAPE, "")
        return Response.json({"Id": await thread(engine.execs.create, id, body)}, status=201)

    async def exec_start(req: Request, id: str) -> Any:
        body = req.json() if req.body else {}
        check_shape(body, {"Detach": "bool", "Tty": "bool", "ConsoleSize": "ints"}, "")
        ex = engine.execs.get(id)
        engine.execs.size_console(id, body.get("ConsoleSize"))
        if body.get("Detach"):
            await thread(engine.execs.start, id, None)
            return Response.empty(200)
        tty = bool(body.get("Tty", ex["ProcessConfig"]["tty"]))
        waiting = hub.wait(id, ex["OpenStdin"], ex["OpenStdout"], ex["OpenStderr"])

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await thread(engine.execs.start, id, lambda _ex: hub.connect_waiting(id))
                msock, is_tty = await waiting.ready
            except Exception as exc:
                hub.cancel(id, waiting)
                message = str(exc) + "\r\n"
                writer.write(message.encode() if tty else frame(2, message.encode()))
                return
            finally:
                hub.released(id)
            end = await pump(msock, reader, writer, stdin=ex["OpenStdin"], stdin_once=True, tty=is_tty,
                             detach_keys=parse_detach_keys(ex.get("DetachKeys") or ""), input_gate=waiting.running)
            if end == CUT:
                engine.execs.stream_cut(id)
                writer.write(CUT_MESSAGE.encode() if is_tty else frame(2, CUT_MESSAGE.encode()))
                return
            await thread(engine.execs.wait, id, 5)

        content = "application/vnd.docker.raw-stream" if tty else "application/vnd.docker.multiplexed-stream"
        return Response.hijack(session, content_type=content)

    async def exec_inspect(req: Request, id: str) -> Response:
        ex = engine.execs.get(id)
        return Response.json({**ex, "Pid": ex["Pid"]})

    async def exec_resize(req: Request, id: str) -> Response:
        engine.execs.get(id)
        await thread(engine.monitor.resize, id, req.qint("h", 24), req.qint("w", 80))
        return Response.empty(200)

    async def prune(req: Request) -> Response:
        filters = flt.parse(req.qjson("filters"))
        flt.check_container_filters(filters)
        deleted = []
        for rec in await thread(engine.records):
            if rec["State"]["Running"] or not flt.container_matches(rec, filters):
                continue
            await lifecycle(engine.remove, rec["Id"])
            deleted.append(rec["Id"])
        return Response.json({"ContainersDeleted": deleted, "SpaceReclaimed": 0})

    r = router.add
    archive_routes(router, engine)  # docker cp: /containers/{id}/archive
    r("GET", "/containers/json", list_)
    r("POST", "/containers/create", create)
    r("POST", "/containers/prune", prune)
    r("GET", "/containers/{id}/json", inspect)
    r("POST", "/containers/{id}/start", start)
    r("POST", "/containers/{id}/stop", stop)
    r("POST", "/containers/{id}/restart", restart)
    r("POST", "/containers/{id}/kill", kill)
    r("POST", "/containers/{id}/pause", pause)
    r("POST", "/containers/{id}/unpause", unpause)
    r("DELETE", "/containers/{id*}", remove)  # a link is named /linker/alias
    r("POST", "/containers/{id}/rename", rename)
    r("POST", "/containers/{id}/update", update)
    r("GET", "/containers/{id}/top", top)
    r("POST", "/containers/{id}/wait", wait)
    r("GET", "/containers/{id}/logs", logs)
    r("GET", "/containers/{id}/stats", stats)
    r("POST", "/containers/{id}/attach", attach)
    r("POST", "/containers/{id}/resize", resize)
    r("POST", "/containers/{id}/exec", exec_create)
    r("POST", "/exec/{id}/start", exec_start)
    r("GET", "/exec/{id}/json", exec_inspect)
    r("POST", "/exec/{id}/resize", exec_resize)
