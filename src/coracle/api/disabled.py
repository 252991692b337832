"""Endpoints of Docker features that are off in coracle, answered as Docker answers them.

Clients probe these (the docker CLI's `info` and `node ls`, compose, the SDK,
IDE plugins). Docker with swarm mode inactive answers every swarm object with
503 and its "not a swarm manager" message, lists no plugins, and only
BuildKit uses /session and /grpc; a clear answer here beats a bare 404.
"""

from __future__ import annotations

from coracle.api.http import Request, Response, Router
from coracle.errors import InvalidParameter, NotFound, Unavailable

NOT_A_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect '
                 'this node to swarm and try again.')
SWARM_INACTIVE = {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                  "Error": "", "RemoteManagers": None}
SWARM_OBJECTS = ("nodes", "services", "tasks", "secrets", "configs")


def routes(router: Router) -> None:
    async def not_a_manager(req: Request, **_: str) -> Response:
        raise Unavailable(NOT_A_MANAGER)

    async def no_swarm_mode(req: Request, **_: str) -> Response:
        raise Unavailable("swarm mode is not supported by coracle: it runs containers on this host only")

    async def not_in_swarm(req: Request) -> Response:
        raise Unavailable("This node is not part of a swarm")

    async def no_plugins(req: Request) -> Response:
        return Response.json([])

    async def no_such_plugin(req: Request, name: str) -> Response:
        raise NotFound(f"plugin \"{name}\" not found")

    async def plugins_unsupported(req: Request, **_: str) -> Response:
        raise InvalidParameter("plugins are not supported by coracle")

    async def buildkit_only(req: Request) -> Response:
        raise InvalidParameter("this endpoint serves BuildKit sessions, which coracle does not provide; "
                               "build with the classic builder (DOCKER_BUILDKIT=0)")

    router.add("GET", "/swarm", not_a_manager)
    router.add("GET", "/swarm/unlockkey", not_a_manager)
    for action in ("init", "join"):
        router.add("POST", f"/swarm/{action}", no_swarm_mode)
    for action in ("leave", "update", "unlock", "unlockkey/rotate"):
        router.add("POST", f"/swarm/{action}", not_in_swarm)
    for kind in SWARM_OBJECTS:
        router.add("GET", f"/{kind}", not_a_manager)
        router.add("POST", f"/{kind}/create", not_a_manager)
        router.add("GET", f"/{kind}/{{id}}", not_a_manager)
        router.add("GET", f"/{kind}/{{id}}/logs", not_a_manager)
        router.add("POST", f"/{kind}/{{id}}/update", not_a_manager)
        router.add("DELETE", f"/{kind}/{{id}}", not_a_manager)
    router.add("GET", "/plugins", no_plugins)
    router.add("GET", "/plugins/{name*}/json", no_such_plugin)
    router.add("GET", "/plugins/privileges", plugins_unsupported)
    router.add("POST", "/plugins/pull", plugins_unsupported)
    router.add("POST", "/plugins/create", plugins_unsupported)
    for method, pattern in (("POST", "/plugins/{name*}/{action}"), ("DELETE", "/plugins/{name*}")):
        router.add(method, pattern, plugins_unsupported)
    router.add("POST", "/session", buildkit_only)
    router.add("POST", "/grpc", buildkit_only)
