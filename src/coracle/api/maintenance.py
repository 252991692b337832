"""coracle's own endpoints beyond Docker's API: /coracle/check (reconciliation on demand)."""

from __future__ import annotations

import asyncio

from coracle.api.backend import ReconcileBackend
from coracle.api.http import Request, Response, Router


class MaintenanceRouter:
    """`coracle system check` over the reconciliation's narrow backend."""

    def __init__(self, reconciler: ReconcileBackend) -> None:
        self.reconciler = reconciler

    def register(self, router: Router) -> None:
        router.add("GET", "/coracle/check", self.check)
        router.add("POST", "/coracle/check", self.check)

    async def check(self, req: Request) -> Response:
        """GET reports only; POST repairs unless dry_run=1."""
        dry_run = req.method == "GET" or req.qbool("dry_run")
        return Response.json(await asyncio.to_thread(self.reconciler.check, dry_run))
