"""Engine API routes for networks: /networks/..."""

from __future__ import annotations

import asyncio
from typing import Any

from coracle.api.containers import ENDPOINT_SHAPE, check_shape
from coracle.api.filters import parse as parse_filters
from coracle.api.http import Request, Response, Router
from coracle.engine.engine import Engine
from coracle.errors import InvalidParameter

thread = asyncio.to_thread
CREATE_SHAPE: dict[str, Any] = {
    "Name": "str", "Driver": "str", "Scope": "str", "ConfigOnly": "bool", "ConfigFrom": "obj",
    **dict.fromkeys(("Internal", "Attachable", "Ingress", "EnableIPv4", "EnableIPv6", "CheckDuplicate"), "bool"),
    "IPAM": {"Driver": "str", "Options": "labels",
             "Config": [{"Subnet": "str", "IPRange": "str", "Gateway": "str", "AuxiliaryAddresses": "labels"}]}, "Options": "labels", "Labels": "labels",
}
CONNECT_SHAPE: dict[str, Any] = {"Container": "str", "EndpointConfig": ENDPOINT_SHAPE, "Force": "bool"}


def routes(router: Router, engine: Engine, network: Any) -> None:
    def announce(action: str, net_ref: str, container_ref: str) -> None:
        """Docker's `network connect|disconnect` event: the network is the actor, the container an attribute."""
        net, rec = network.inspect(net_ref), engine.get(container_ref)
        engine.events.publish("network", action, net["Id"],
                              {"container": rec["Id"], "name": net["Name"], "type": net["Driver"]})

    async def list_(req: Request) -> Response:
        return Response.json(await thread(network.list, parse_filters(req.qjson("filters"))))

    async def inspect(req: Request, id: str) -> Response:
        return Response.json(await thread(network.inspect, id))

    async def create(req: Request) -> Response:
        body = req.json()
        check_shape(body, CREATE_SHAPE, "")
        if not isinstance(body, dict) or not isinstance(body.get("Name"), str) or not body["Name"]:
            raise InvalidParameter("network name is required")
        result = await thread(
            network.create, body["Name"], driver=body.get("Driver") or "bridge", ipam=body.get("IPAM"),
            internal=bool(body.get("Internal")), options=body.get("Options") or {},
            labels=body.get("Labels") or {}, enable_ipv6=bool(body.get("EnableIPv6")),
            attachable=bool(body.get("Attachable")),
            check_duplicate=body.get("CheckDuplicate", True),
        )
        engine.events.publish("network", "create", result["Id"], {"name": body["Name"], "type": body.get("Driver") or "bridge"})
        return Response.json(result, status=201)

    async def remove(req: Request, id: str) -> Response:
        net = await thread(network.inspect, id)
        await thread(network.remove, id)
        engine.events.publish("network", "destroy", net["Id"], {"name": net["Name"], "type": net["Driver"]})
        return Response.empty(204)

    async def connect(req: Request, id: str) -> Response:
        body = req.json()
        check_shape(body, CONNECT_SHAPE, "")
        if not isinstance(body, dict) or not body.get("Container"):
            raise InvalidParameter("container is required")
        await thread(engine.connect, body["Container"], id, body.get("EndpointConfig") or {})
        await thread(announce, "connect", id, body["Container"])
        return Response.empty(200)

    async def disconnect(req: Request, id: str) -> Response:
        body = req.json()
        check_shape(body, CONNECT_SHAPE, "")
        if not isinstance(body, dict) or not body.get("Container"):
            raise InvalidParameter("container is required")
        await thread(engine.disconnect, body["Container"], id, bool(body.get("Force")))
        await thread(announce, "disconnect", id, body["Container"])
        return Response.empty(200)

    async def prune(req: Request) -> Response:
        removed = await thread(network.prune, parse_filters(req.qjson("filters")))
        for name in removed:
            engine.events.publish("network", "destroy", name, {"name": name})
        return Response.json({"NetworksDeleted": removed})

    router.add("GET", "/networks", list_)
    router.add("GET", "/networks/{id}", inspect)
    router.add("POST", "/networks/create", create)
    router.add("DELETE", "/networks/{id}", remove)
    router.add("POST", "/networks/{id}/connect", connect)
    router.add("POST", "/networks/{id}/disconnect", disconnect)
    router.add("POST", "/networks/prune", prune)
