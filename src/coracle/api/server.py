"""Assembling the Engine API: every route module registered on one router."""

from __future__ import annotations

from typing import Any

import os

from coracle.api import build as build_routes, containers, disabled, images as image_routes, maintenance
from coracle.api import networks as network_routes, system, volumes as volume_routes
from coracle.build import service as build_service
from coracle.api.http import Router
from coracle.api.streams import AttachHub
from coracle.engine.engine import Engine


def build_router(*, engine: Engine, images: Any, network: Any, events: Any, data_root: str, exec_root: str) -> Router:
    router = Router()
    hub = AttachHub(engine.monitor)
    containers.routes(router, engine, hub)
    image_routes.routes(router, engine, images)
    network_routes.routes(router, engine, network)
    volume_routes.routes(router, engine.volumes)
    builder, cache = build_service(engine, images, os.path.join(data_root, "build"))
    build_routes.routes(router, engine, images, builder, cache)
    system.routes(router, engine, images, network, data_root, cache)
    maintenance.routes(router, engine)
    disabled.routes(router)
    return router
