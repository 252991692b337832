"""Engine API routes for networks: /networks/...

Network events are announced by the network manager itself (connect and
disconnect also when a container starts and stops), so routes only translate.
"""

from __future__ import annotations

import asyncio
from typing import Any

from coracle.api.backend import ContainerBackend, NetworkBackend
from coracle.api.filters import parse as parse_filters
from coracle.api.http import Request, Response, Router
from coracle.api.shapes import ENDPOINT_SHAPE, check_shape
from coracle.errors import InvalidParameter

thread = asyncio.to_thread
CREATE_SHAPE: dict[str, Any] = {
    "Name": "str", "Driver": "str", "Scope": "str", "ConfigOnly": "bool", "ConfigFrom": "obj",
    **dict.fromkeys(("Internal", "Attachable", "Ingress", "EnableIPv4", "EnableIPv6", "CheckDuplicate"), "bool"),
    "IPAM": {"Driver": "str", "Options": "labels",
             "Config": [{"Subnet": "str", "IPRange": "str", "Gateway": "str", "AuxiliaryAddresses": "labels"}]},
    "Options": "labels", "Labels": "labels",
}
CONNECT_SHAPE: dict[str, Any] = {"Container": "str", "EndpointConfig": ENDPOINT_SHAPE, "Force": "bool"}


def _connect_body(req: Request) -> dict[str, Any]:
    body = req.json()
    check_shape(body, CONNECT_SHAPE, "")
    if not isinstance(body, dict) or not body.get("Container"):
        raise InvalidParameter("container is required")
    return body


class NetworkRouter:
    def __init__(self, containers: ContainerBackend, network: NetworkBackend) -> None:
        self.containers, self.network = containers, network

    def register(self, router: Router) -> None:
        router.add("GET", "/networks", self.list_)
        router.add("GET", "/networks/{id}", self.inspect)
        router.add("POST", "/networks/create", self.create)
        router.add("DELETE", "/networks/{id}", self.remove)
        router.add("POST", "/networks/{id}/connect", self.connect)
        router.add("POST", "/networks/{id}/disconnect", self.disconnect)
        router.add("POST", "/networks/prune", self.prune)

    async def list_(self, req: Request) -> Response:
        return Response.json(await thread(self.network.list, parse_filters(req.qjson("filters"))))

    async def inspect(self, req: Request, id: str) -> Response:
        return Response.json(await thread(self.network.inspect, id))

    async def create(self, req: Request) -> Response:
        body = req.json()
        check_shape(body, CREATE_SHAPE, "")
        if not isinstance(body, dict) or not isinstance(body.get("Name"), str) or not body["Name"]:
            raise InvalidParameter("network name is required")
        result = await thread(
            self.network.create, body["Name"], driver=body.get("Driver") or "bridge", ipam=body.get("IPAM"),
            internal=bool(body.get("Internal")), options=body.get("Options") or {},
            labels=body.get("Labels") or {}, enable_ipv6=bool(body.get("EnableIPv6")),
            attachable=bool(body.get("Attachable")),
            check_duplicate=body.get("CheckDuplicate", True),
        )
        return Response.json(result, status=201)

    async def remove(self, req: Request, id: str) -> Response:
        await thread(self.network.remove, id)
        return Response.empty(204)

    async def connect(self, req: Request, id: str) -> Response:
        body = _connect_body(req)
        await thread(self.containers.connect, body["Container"], id, body.get("EndpointConfig") or {})
        return Response.empty(200)

    async def disconnect(self, req: Request, id: str) -> Response:
        body = _connect_body(req)
        await thread(self.containers.disconnect, body["Container"], id, bool(body.get("Force")))
        return Response.empty(200)

    async def prune(self, req: Request) -> Response:
        return Response.json({"NetworksDeleted": await thread(self.network.prune, parse_filters(req.qjson("filters")))})
