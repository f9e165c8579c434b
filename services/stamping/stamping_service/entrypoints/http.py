"""The stamping service's HTTP API: the buyer's quota."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
from aiohttp import web
from emeterai_shared.auth import TokenVerifier
from emeterai_shared.http import OpenApi, Operation
from pydantic import BaseModel, Field

from stamping_service.adapters.quota import QuotaRepository


class QuotaView(BaseModel):
    """The caller's stamps as the stamping service knows them from minting's events.

    A RESERVED stamp (held by a stamping job in progress) counts in neither ``available`` nor
    ``used``: it becomes USED when its document is stamped, or UNUSED again if the job fails.
    """

    available: int = Field(description="UNUSED stamps: free to stamp a document with")
    used: int = Field(description="stamps affixed to a document")
    serials_available: list[str] = Field(description="the UNUSED serials, oldest issuance first (then by serial)")


def add_routes(app: web.Application, spec: OpenApi, pool: asyncpg.Pool,
               verifier: Callable[[], TokenVerifier]) -> None:
    """``verifier`` is called per request, so that building the app reads no key file."""

    async def get_quota(request: web.Request) -> web.Response:
        principal = verifier().from_request(request)
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            quota = await QuotaRepository(conn).quota(principal.account_id)
        view = QuotaView(available=quota.available, used=quota.used, serials_available=quota.serials_available)
        return web.json_response(view.model_dump(mode="json"))

    app.router.add_get("/v1/quota", get_quota)

    spec.security_schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"}
    spec.add(Operation("GET", "/v1/quota", "The caller's stamps: available, used and the serials available",
                       tags=["stamping"], security=["bearer"],
                       responses={200: ("the caller's quota", QuotaView),
                                  401: ("no, or an invalid, bearer token", None)}))
