"""coracle's own endpoints beyond Docker's API: /coracle/check (reconciliation on demand)."""

from __future__ import annotations

import asyncio

from coracle.api.http import Request, Response, Router
from coracle.engine.check import check
from coracle.engine.engine import Engine


def routes(router: Router, engine: Engine) -> None:
    async def run_check(req: Request) -> Response:
        """GET reports only; POST repairs unless dry_run=1."""
        dry_run = req.method == "GET" or req.qbool("dry_run")
        return Response.json(await asyncio.to_thread(check, engine, dry_run))

    router.add("GET", "/coracle/check", run_check)
    router.add("POST", "/coracle/check", run_check)
