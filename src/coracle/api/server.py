"""Assembling the Engine API: every route module registered on one router."""

from __future__ import annotations

from typing import Any

from coracle.api import containers, disabled, images as image_routes, maintenance, networks as network_routes, system
from coracle.api.http import Router
from coracle.api.streams import AttachHub
from coracle.engine.engine import Engine


def build_router(*, engine: Engine, images: Any, network: Any, events: Any, data_root: str, exec_root: str) -> Router:
    router = Router()
    hub = AttachHub(engine.monitor)
    containers.routes(router, engine, hub)
    image_routes.routes(router, engine, images)
    network_routes.routes(router, engine, network)
    system.routes(router, engine, images, network, data_root)
    maintenance.routes(router, engine)
    disabled.routes(router)
    return router
