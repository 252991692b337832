"""A tiny fake Engine API (on coracle's own HTTP layer) and a way to run the `coracle` command against it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from coracle.api.http import Hijack, Request, Response, Router, StreamResponse, serve
from coracle.errors import InvalidParameter, NotFound

MUX = "application/vnd.docker.multiplexed-stream"


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(data)) + data


def exit_code(cmd: list[str]) -> int:
    m = re.search(r"exit (\d+)", " ".join(cmd))
    return int(m.group(1)) if m else 0


class FakeEngine:
    """Canned containers and the calls a docker client makes; records every create body."""

    def __init__(self, sock: str) -> None:
        self.sock = sock
        self.host = "unix://" + sock
        self.containers: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.pulled: list[str] = []
        self.images = {"busybox:latest"}
        self.execs: dict[str, dict[str, Any]] = {}
        self.loaded: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.events: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}
        self.add("web", "busybox", ["httpd", "-f"], running=True, created=time.time() - 90,
                 ports=[{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}])
        self.add("old", "busybox", ["true"], running=False, created=time.time() - 7200)

    def add(self, name: str, image: str, cmd: list[str], running: bool, created: float,
            ports: list[dict[str, Any]] | None = None, tty: bool = False, open_stdin: bool = False) -> str:
        cid = os.urandom(32).hex()
        self.containers[cid] = {
            "Id": cid, "Name": "/" + name, "Created": created, "Image": image, "Ports": ports or [],
            "Config": {"Image": image, "Cmd": cmd, "Tty": tty, "OpenStdin": open_stdin, "Labels": {"app": name}},
            "State": {"Status": "running" if running else "exited", "Running": running, "Paused": False,
                      "ExitCode": 0, "Pid": 4242 if running else 0},
            "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]} if ports else {}},
        }
        return cid

    def find(self, ident: str) -> dict[str, Any]:
        for c in self.containers.values():
            if ident in (c["Id"], c["Name"].lstrip("/")) or (len(ident) >= 3 and c["Id"].startswith(ident)):
                return c
        raise NotFound(f"No such container: {ident}")

    def signals(self, cid: str) -> tuple[asyncio.Event, asyncio.Event]:
        return self.events.setdefault(cid, (asyncio.Event(), asyncio.Event()))  # (started, exited)

    def summary(self, c: dict[str, Any]) -> dict[str, Any]:
        state = c["State"]
        status = "Up 30 seconds" if state["Running"] else f"Exited ({state['ExitCode']}) 2 hours ago"
        return {"Id": c["Id"], "Names": [c["Name"]], "Image": c["Image"], "Command": " ".join(c["Config"]["Cmd"]),
                "Created": int(c["Created"]), "Ports": c["Ports"], "Labels": c["Config"]["Labels"],
                "State": state["Status"], "Status": status, "NetworkSettings": {"Networks": {"bridge": {}}},
                "Mounts": []}

    def router(self) -> Router:
        r = Router()

        async def version(req: Request) -> Response:
            return Response.json({"ApiVersion": "1.47", "MinAPIVersion": "1.24", "Version": "27.0.0", "Os": "linux",
                                  "Arch": "amd64", "Platform": {"Name": "fake"},
                                  "Components": [{"Name": "Engine", "Version": "27.0.0", "Details": {}}]})

        async def list_(req: Request) -> Response:
            out = [self.summary(c) for c in self.containers.values() if req.qbool("all") or c["State"]["Running"]]
            return Response.json(sorted(out, key=lambda c: -c["Created"]))

        async def inspect(req: Request, id: str) -> Response:
            return Response.json(self.find(id))

        async def create(req: Request) -> Response:
            body = req.json()
            image = body["Image"] if ":" in body["Image"] else body["Image"] + ":latest"
            if image not in self.images:
                raise NotFound(f"No such image: {image}")
            self.created.append({"name": req.q("name"), "body": body})
            cid = self.add(req.q("name") or "fake", body["Image"], body.get("Cmd") or ["sh"], running=False,
                           created=time.time(), tty=body.get("Tty", False), open_stdin=body.get("OpenStdin", False))
            self.containers[cid]["State"]["Status"] = "created"
            return Response.json({"Id": cid, "Warnings": []}, status=201)

        async def pull(req: Request) -> StreamResponse:
            ref = f"{req.q('fromImage')}:{req.q('tag')}"

            async def produce(out: StreamResponse) -> None:
                if req.q("fromImage") == "unobtainable":
                    await out.write(b'{"error": "pull access denied for unobtainable"}\n')
                    return
                self.pulled.append(ref)
                self.images.add(ref)
                for msg in ({"status": f"Pulling from library/{req.q('fromImage')}", "id": req.q("tag")},
                            {"status": "Downloading", "progressDetail": {"current": 1}, "id": "abc"},
                            {"status": f"Status: Downloaded newer image for {ref}"}):
                    await out.write(json.dumps(msg).encode() + b"\n")

            return StreamResponse(produce)

        async def start(req: Request, id: str) -> Response:
            c = self.find(id)
            if c["Config"]["Cmd"][0] == "nosuchcmd":
                raise InvalidParameter('failed to create task: exec: "nosuchcmd": executable file not found in $PATH')
            c["State"].update(Status="running", Running=True)
            self.signals(c["Id"])[0].set()
            return Response.empty(204)

        async def attach(req: Request, id: str) -> Hijack:
            c = self.find(id)
            started, exited = self.signals(c["Id"])

            async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await started.wait()
                writer.write(frame(1, f"out:{' '.join(c['Config']['Cmd'])}\n".encode()) + frame(2, b"err\n"))
                if req.qbool("stdin"):
                    data = await reader.read()  # until the client half-closes
                    writer.write(frame(1, b"stdin:" + data))
                await writer.drain()
                c["State"].update(Status="exited", Running=False, ExitCode=exit_code(c["Config"]["Cmd"]))
                exited.set()

            return Hijack(session, MUX)

        async def wait(req: Request, id: str) -> StreamResponse:
            c = self.find(id)
            exited = self.signals(c["Id"])[1]

            async def produce(out: StreamResponse) -> None:
                await exited.wait()
                await out.write(json.dumps({"StatusCode": c["State"]["ExitCode"]}).encode())

            return StreamResponse(produce)

        async def remove(req: Request, id: str) -> Response:
            c = self.find(id)
            if c["State"]["Running"] and not req.qbool("force"):
                from coracle.errors import Conflict

                raise Conflict(f"cannot remove container \"{c['Name']}\": container is running: stop the container "
                               "before removing or force remove")
            del self.containers[c["Id"]]
            return Response.empty(204)

        async def logs(req: Request, id: str) -> StreamResponse:
            self.find(id)

            async def produce(out: StreamResponse) -> None:
                await out.write(frame(1, b"line one\n") + frame(2, b"problem\n") + frame(1, b"line two\n"))

            return StreamResponse(produce, MUX)

        async def exec_create(req: Request, id: str) -> Response:
            c = self.find(id)
            if not c["State"]["Running"]:
                from coracle.errors import Conflict

                raise Conflict(f"container {c['Id']} is not running")
            eid = os.urandom(32).hex()
            self.execs[eid] = {"cmd": req.json()["Cmd"], "done": False}
            return Response.json({"Id": eid}, status=201)

        async def exec_start(req: Request, id: str) -> Hijack:
            ex = self.execs[id]

            async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(frame(1, f"exec:{' '.join(ex['cmd'])}\n".encode()))
                await writer.drain()
                ex["done"] = True

            return Hijack(session, MUX)

        async def exec_inspect(req: Request, id: str) -> Response:
            ex = self.execs[id]
            return Response.json({"Running": not ex["done"], "ExitCode": exit_code(ex["cmd"]) if ex["done"] else None})

        async def load(req: Request) -> StreamResponse:
            total = 0
            async for chunk in req.stream():
                total += len(chunk)
            self.loaded.append(total)

            async def produce(out: StreamResponse) -> None:
                await out.write(json.dumps({"stream": f"Loaded image: loaded:{total}\n"}).encode() + b"\n")

            return StreamResponse(produce)

        async def save(req: Request) -> StreamResponse:
            names = req.query.get("names", [])

            async def produce(out: StreamResponse) -> None:
                for name in names:
                    await out.write(f"tar-of-{name};".encode())

            return StreamResponse(produce, "application/x-tar")

        r.add("GET", "/version", version)
        r.add("POST", "/images/load", load, stream_body=True)
        r.add("GET", "/images/get", save)
        r.add("GET", "/containers/json", list_)
        r.add("POST", "/containers/create", create)
        r.add("POST", "/images/create", pull, stream_body=True)
        r.add("GET", "/containers/{id}/json", inspect)
        r.add("POST", "/containers/{id}/start", start)
        r.add("POST", "/containers/{id}/attach", attach)
        r.add("POST", "/containers/{id}/wait", wait)
        r.add("DELETE", "/containers/{id}", remove)
        r.add("GET", "/containers/{id}/logs", logs)
        r.add("POST", "/containers/{id}/exec", exec_create)
        r.add("POST", "/exec/{id}/start", exec_start)
        r.add("GET", "/exec/{id}/json", exec_inspect)
        return r

    def start(self) -> None:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(serve(self.router(), self.sock), self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


COMMAND = [sys.executable, "-c", "from coracle.cli.main import main; main()"]


def coracle(host: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `coracle` command; never a traceback, whatever happens."""
    env = {**os.environ, "CORACLE_HOST": host, "CORACLE_CONFIG": os.environ.get("TMPDIR", "/tmp")}
    ran = subprocess.run(COMMAND + list(args), input=stdin if stdin is not None else b"", capture_output=True,
                         env=env, timeout=30)
    res = subprocess.CompletedProcess(ran.args, ran.returncode, ran.stdout.decode(), ran.stderr.decode())
    assert "Traceback" not in res.stderr, res.stderr
    return res
