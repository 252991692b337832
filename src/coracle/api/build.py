"""Engine API routes for builds: POST /build (the classic builder's protocol) and POST /build/prune.

The context tar streams to disk in the build's private directory before it is
unpacked (memory stays flat whatever its size); a small one is unpacked straight
from memory. A Dockerfile that does not
parse is refused with 400 before the progress stream starts, so clients show
Docker's message; later failures travel inside the stream as `errorDetail`
(with a failing RUN's exit code). A client that goes away cancels the build:
its step containers and files are removed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import threading
from typing import Any, BinaryIO
from collections.abc import Callable

from coracle.api.http import Request, Response, Router
from coracle.api.images import with_progress
from coracle.build.builder import Builder, BuildOptions
from coracle.build.cache import BuildCache
from coracle.build.context import Context, unpack
from coracle.build.dockerfile import Dockerfile, parse
from coracle.errors import InvalidParameter
from coracle.trace import Phases

thread = asyncio.to_thread
CONTEXT_IN_MEMORY = 1 << 20  # a context up to this size is unpacked from memory, a larger one streams to disk
SECRETS_HEADER = "X-Coracle-Build-Secrets"  # base64 JSON {id: base64 bytes}: RUN --mount=type=secret


# query parameter -> HostConfig field of the RUN containers (docker build --memory, --cpu-shares ...)
RESOURCES = {"memory": "Memory", "memswap": "MemorySwap", "cpushares": "CpuShares", "cpusetcpus": "CpusetCpus",
             "cpusetmems": "CpusetMems", "cpuperiod": "CpuPeriod", "cpuquota": "CpuQuota"}


def _options(req: Request) -> BuildOptions:
    build_args = req.qjson("buildargs") or {}
    cache_from = req.qjson("cachefrom") or []
    if not isinstance(cache_from, list):
        raise InvalidParameter("cachefrom must be a JSON array of image names")
    labels = req.qjson("labels") or {}
    if not isinstance(build_args, dict) or not isinstance(labels, dict):
        raise InvalidParameter("buildargs and labels must be JSON objects")
    platform = req.q("platform") or ""
    if platform and platform not in ("linux", "linux/amd64", "linux/x86_64"):
        raise InvalidParameter(f'"{platform}": this daemon builds for linux/amd64 only')
    if req.q("remote"):
        raise InvalidParameter("building from a remote context (git or URL) is not supported; send the context")
    secrets: dict[str, bytes] = {}
    if req.headers.get(SECRETS_HEADER):
        try:
            given = json.loads(base64.b64decode(req.headers[SECRETS_HEADER]))
            secrets = {str(k): base64.b64decode(v) for k, v in given.items()}
        except (ValueError, TypeError, AttributeError):
            raise InvalidParameter(f"invalid {SECRETS_HEADER} header") from None
    extra_hosts = [h for value in req.query.get("extrahosts", []) for h in value.split(",") if h]
    resources = {field: value if param.startswith("cpuset") else req.qint(param)
                 for param, field in RESOURCES.items() if (value := req.q(param)) not in (None, "", "0")}
    return BuildOptions(
        dockerfile=req.q("dockerfile") or "Dockerfile", tags=[t for t in req.query.get("t", []) if t],
        build_args=build_args, target=req.q("target") or "", labels=labels, no_cache=req.qbool("nocache"),
        pull=req.qbool("pull"), remove=req.qbool("rm", True), force_remove=req.qbool("forcerm"),
        network_mode=req.q("networkmode") or "", extra_hosts=extra_hosts,
        shm_size=req.qint("shmsize", 0), secrets=secrets, cache_from=[str(ref) for ref in cache_from],
        resources=resources)


def _prepare(builder: Builder, scratch: str, spooled: BinaryIO | None, held: list[bytes],
             dockerfile: str) -> tuple[str, Dockerfile]:
    """The received context unpacked in the build's own directory (made here unless the upload
    was spooled into it), and its Dockerfile parsed: one trip to a worker thread for a small context."""
    scratch = scratch or builder.scratch_dir()
    try:
        context_dir = os.path.join(scratch, "context")
        os.mkdir(context_dir)
        if spooled is not None:
            with spooled:
                spooled.writelines(held)
                spooled.seek(0)
                unpack(spooled, context_dir)
            os.unlink(os.path.join(scratch, "context.tar"))
        else:
            unpack(io.BytesIO(b"".join(held)), context_dir)
        return scratch, parse(Context(context_dir).read_file(dockerfile))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def routes(router: Router, engine: Any, images: Any, builder: Builder, cache: BuildCache) -> None:
    async def build(req: Request) -> Any:
        options = _options(req)
        quiet = req.qbool("q")
        phases = Phases("build", "")
        held: list[bytes] = []   # the context so far; past CONTEXT_IN_MEMORY it goes to a file
        size = 0
        scratch = ""
        spooled: Any = None
        try:
            async for chunk in req.stream():
                held.append(chunk)
                size += len(chunk)
                if size >= CONTEXT_IN_MEMORY:
                    if spooled is None:
                        scratch = await thread(builder.scratch_dir)
                        spooled = await thread(open, os.path.join(scratch, "context.tar"), "w+b")
                    await thread(spooled.writelines, held)
                    held, size = [], 0
            phases.mark("upload")
            scratch, dockerfile = await thread(_prepare, builder, scratch, spooled, held, options.dockerfile)
            phases.mark("context")
        except BaseException:
            if spooled is not None:
                spooled.close()
            if scratch:
                await thread(shutil.rmtree, scratch, True)
            raise
        context_dir = os.path.join(scratch, "context")
        phases.ident = os.path.basename(scratch)
        cancelled = threading.Event()

        def work(progress: Callable[[dict[str, Any]], None]) -> str:
            def emit(message: dict[str, Any]) -> None:
                if not quiet or "stream" not in message:
                    progress(message)

            try:
                image_id = builder.build(context_dir, scratch, options, emit, cancelled, dockerfile)
                phases.mark("steps")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
                phases.done()
            if quiet:
                progress({"stream": image_id + "\n"})
            return image_id

        async def produce(stream: Any) -> None:
            try:
                await with_progress(stream, work)
            except BaseException:  # the client went away: stop the build (it cleans up after itself)
                cancelled.set()
                raise

        return Response.stream(produce, content_type="application/json")

    async def prune(req: Request) -> Response:
        def in_use(image_id: str) -> bool:
            return any(c.image_id == image_id for c in engine.containers())

        return Response.json(await thread(cache.prune, in_use))

    router.add("POST", "/build", build, stream_body=True)
    router.add("POST", "/build/prune", prune)
