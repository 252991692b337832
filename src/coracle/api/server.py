"""Assembling the Engine API: every route module registered on one router."""

from __future__ import annotations

import os

from coracle.api import build as build_routes, disabled
from coracle.api.maintenance import MaintenanceRouter
from coracle.api.images import ImageRouter
from coracle.api.system import SystemRouter
from coracle.api.volumes import VolumeRouter
from coracle.api.networks import NetworkRouter
from coracle.api.backend import EventSource, ImageBackend, NetworkBackend, StreamBackend
from coracle.api.containers import ContainerRouter, ContainerStreamRouter, Lifecycle
from coracle.api.execs import ExecRouter
from coracle.build import service as build_service
from coracle.api.http import Router
from coracle.api.streams import AttachHub
from coracle.api.container_files import routes as container_file_routes
from coracle.engine.check import Reconciler
from coracle.engine.engine import Engine


def build_router(*, engine: Engine, images: ImageBackend, network: NetworkBackend, events: EventSource,
                 streams: StreamBackend, data_root: str, exec_root: str) -> Router:
    """Every router on one: each given the narrow backends it needs (api/backend.py)."""
    router = Router()
    hub = AttachHub(streams)
    container_file_routes(router, engine)  # docker cp: /containers/{id}/archive
    ContainerRouter(engine, images, hub, Lifecycle()).register(router)
    ContainerStreamRouter(engine, streams, events, hub).register(router)
    ExecRouter(engine.execs, streams, hub).register(router)
    ImageRouter(engine, images).register(router)
    NetworkRouter(engine, network).register(router)
    VolumeRouter(engine.volumes).register(router)
    builder, cache = build_service(engine, images, os.path.join(data_root, "build"))
    build_routes.routes(router, engine, images, builder, cache)
    SystemRouter(engine, images, events, engine.volumes, data_root, cache).register(router)
    MaintenanceRouter(Reconciler(engine)).register(router)
    disabled.routes(router)
    return router
