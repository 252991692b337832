"""Engine API routes for volumes: /volumes/..."""

from __future__ import annotations

import asyncio
from typing import Any

from coracle.api.shapes import check_shape
from coracle.api.filters import parse as parse_filters
from coracle.api.http import Request, Response, Router
from coracle.api.backend import VolumeBackend
from coracle.api.render import older_than

thread = asyncio.to_thread
CREATE_SHAPE: dict[str, Any] = {"Name": "str", "Driver": "str", "DriverOpts": "labels", "Labels": "labels"}


class VolumeRouter:
    """Volume routes over the volumes' narrow backend."""

    def __init__(self, volumes: VolumeBackend) -> None:
        self.volumes = volumes

    def register(self, router: Router) -> None:
        router.add("GET", "/volumes", self.list_)
        router.add("POST", "/volumes/create", self.create)
        router.add("POST", "/volumes/prune", self.prune)
        router.add("GET", "/volumes/{name}", self.inspect)
        router.add("DELETE", "/volumes/{name}", self.remove)

    async def list_(self, req: Request) -> Response:
        return Response.json(await thread(self.volumes.list, parse_filters(req.qjson("filters"))))

    async def inspect(self, req: Request, name: str) -> Response:
        return Response.json(self.volumes.inspect(await thread(self.volumes.get, name)))

    async def create(self, req: Request) -> Response:
        body = req.json() or {}
        check_shape(body, CREATE_SHAPE, "")
        vol = await thread(self.volumes.create, body.get("Name") or "", body.get("Driver") or "local",
                           body.get("DriverOpts") or {}, body.get("Labels") or {})
        return Response.json(self.volumes.inspect(vol), status=201)

    async def remove(self, req: Request, name: str) -> Response:
        await thread(self.volumes.remove, name, req.qbool("force"))
        return Response.empty(204)

    async def prune(self, req: Request) -> Response:
        filters = parse_filters(req.qjson("filters"))
        if older_than(req.version, (1, 42)):
            filters.setdefault("all", ["true"])  # before 1.42 prune took named volumes too
        return Response.json(await thread(self.volumes.prune, filters))
