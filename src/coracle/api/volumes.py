"""Engine API routes for volumes: /volumes/..."""

from __future__ import annotations

import asyncio
from typing import Any

from coracle.api.shapes import check_shape
from coracle.api.filters import parse as parse_filters
from coracle.api.http import Request, Response, Router
from coracle.engine.volumes import Volumes

thread = asyncio.to_thread
CREATE_SHAPE: dict[str, Any] = {"Name": "str", "Driver": "str", "DriverOpts": "labels", "Labels": "labels"}


def _older_than(version: str, wanted: tuple[int, int]) -> bool:
    """The client's API version (empty: the newest) is below `wanted`."""
    if not version:
        return False
    major, _, minor = version.partition(".")
    return (int(major), int(minor or 0)) < wanted


def routes(router: Router, volumes: Volumes) -> None:
    async def list_(req: Request) -> Response:
        return Response.json(await thread(volumes.list, parse_filters(req.qjson("filters"))))

    async def inspect(req: Request, name: str) -> Response:
        return Response.json(volumes.inspect(await thread(volumes.get, name)))

    async def create(req: Request) -> Response:
        body = req.json() or {}
        check_shape(body, CREATE_SHAPE, "")
        vol = await thread(volumes.create, body.get("Name") or "", body.get("Driver") or "local",
                           body.get("DriverOpts") or {}, body.get("Labels") or {})
        return Response.json(volumes.inspect(vol), status=201)

    async def remove(req: Request, name: str) -> Response:
        await thread(volumes.remove, name, req.qbool("force"))
        return Response.empty(204)

    async def prune(req: Request) -> Response:
        filters = parse_filters(req.qjson("filters"))
        if _older_than(req.version, (1, 42)):
            filters.setdefault("all", ["true"])  # before 1.42 prune took named volumes too
        return Response.json(await thread(volumes.prune, filters))

    router.add("GET", "/volumes", list_)
    router.add("POST", "/volumes/create", create)
    router.add("POST", "/volumes/prune", prune)
    router.add("GET", "/volumes/{name}", inspect)
    router.add("DELETE", "/volumes/{name}", remove)
