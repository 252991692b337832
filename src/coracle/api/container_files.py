"""Engine API routes for `docker cp` (HEAD/GET/PUT /containers/{id}/archive), `docker
export` (GET /containers/{id}/export) and `docker diff` (GET /containers/{id}/changes).

HEAD answers the path's stat in the `X-Docker-Container-Path-Stat` header
(base64 JSON), which the CLI reads to decide how to name what it copies; GET
streams the tar of a path; PUT unpacks an uploaded tar into a directory. The
work itself is in coracle.engine.file_access.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

from coracle.api.http import Request, Response, Router
from coracle.api.images import spool
from coracle.engine import file_access
from coracle.engine.engine import Engine
from coracle.errors import InvalidParameter
from coracle.runtime.confined import Helper

thread = asyncio.to_thread
STAT_HEADER = "X-Docker-Container-Path-Stat"


def _stat_header(found: dict[str, Any]) -> dict[str, str]:
    return {STAT_HEADER: base64.b64encode(json.dumps(found).encode()).decode()}


def _path(req: Request) -> str:
    path = req.q("path")
    if not path:
        raise InvalidParameter("path is required")
    return path


def routes(router: Router, engine: Engine) -> None:
    async def head(req: Request, id: str) -> Response:
        found = await thread(file_access.stat, engine, id, _path(req))
        return Response(200, b"", content_type="", headers=_stat_header(found))

    async def get(req: Request, id: str) -> Any:
        found, helper = await thread(file_access.export, engine, id, _path(req))
        resp = _tar_stream(helper)
        resp.headers.update(_stat_header(found))
        return resp

    async def export(req: Request, id: str) -> Any:
        return _tar_stream(await thread(file_access.export_filesystem, engine, id))

    async def changes(req: Request, id: str) -> Response:
        return Response.json(await thread(file_access.changes, engine, id))

    async def put(req: Request, id: str) -> Response:
        path = _path(req)
        engine.container(id)
        upload = await spool(req)
        try:
            with await thread(open, upload, "rb") as tar:
                await thread(file_access.extract, engine, id, path, tar,
                             no_overwrite_dir_non_dir=req.qbool("noOverwriteDirNonDir"),
                             copy_uid_gid=req.qbool("copyUIDGID"))
        finally:
            os.unlink(upload)
        return Response.empty(200)

    router.add("HEAD", "/containers/{id}/archive", head)  # before GET: HEAD would otherwise match it
    router.add("GET", "/containers/{id}/archive", get)
    router.add("PUT", "/containers/{id}/archive", put, stream_body=True)
    router.add("GET", "/containers/{id}/export", export)
    router.add("GET", "/containers/{id}/changes", changes)


def _tar_stream(helper: Helper) -> Any:
    """The tar a helper writes after its answer, streamed; the helper is reaped at the end."""
    async def produce(stream: Any) -> None:
        try:
            while chunk := await thread(helper.stdout.read1, 1 << 20):
                await stream.write(chunk)
        finally:
            await thread(helper.close)

    return Response.stream(produce, content_type="application/x-tar")
