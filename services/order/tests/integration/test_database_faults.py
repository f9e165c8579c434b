"""Faults on PostgreSQL's side get ``503`` with ``Retry-After``, never a 500 (the front-door invariant
of ``make chaos``), provoked without restarting the shared server:

* a query cut by the server: the api's backend is blocked on a lock this test holds, then killed
  with ``pg_terminate_backend`` (only this session's database's backends are touched, so other
  sessions on the machine notice nothing) -> 503 + Retry-After; afterwards the pool recovers;
* the api's idle pooled connections killed -> the next requests are 200 or 503, never 500;
* a server that hangs up during the connection handshake, as PostgreSQL does while it goes down or
  comes back up: asyncpg raises the builtin ``ConnectionError`` from ``connect``, the class that
  ``make chaos`` saw answered 500 -> 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from emeterai_shared.db import create_pool
from emeterai_testkit.fixtures import eventually, reset_service, settings_for
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings
from order_service.dependencies import OrderDeps

Client = TestClient[web.Request, web.Application]
ServeApi = Callable[[OrderSettings, asyncpg.Pool], AbstractAsyncContextManager[tuple[Client, OrderDeps]]]
OTHERS = "datname = current_database() AND pid <> pg_backend_pid()"
"""This database's backends other than the test's own: the api's pooled connections."""


@dataclass
class Api:
    client: Client
    settings: OrderSettings
    admin: asyncpg.Connection
    serve: ServeApi

    async def order(self) -> tuple[str, dict[str, str]]:
        resp = await self.client.post("/v1/accounts", json={"name": "Siti Aminah", "phone": "+6281234567890"})
        assert resp.status == 201, await resp.text()
        auth = {"Authorization": f"Bearer {(await resp.json())['token']}"}
        resp = await self.client.post("/v1/orders", json={"quantity": 1},
                                      headers={**auth, "Idempotency-Key": str(uuid.uuid4())})
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["order_id"]), auth


async def answer(client: Client, path: str, headers: dict[str, str], json: Any = None) -> tuple[int, Any, str | None]:
    """GET ``path``, or POST ``json`` to it (with a fresh Idempotency-Key)."""
    if json is None:
        resp = await client.get(path, headers=headers)
    else:
        resp = await client.post(path, json=json, headers={**headers, "Idempotency-Key": str(uuid.uuid4())})
    return resp.status, await resp.json(), resp.headers.get("Retry-After")


def assert_fault_answer(status: int, body: Any, retry_after: str | None) -> None:
    assert status == 503, (status, body)
    assert body["error"]["code"] == "unavailable" and retry_after is not None and int(retry_after) >= 1


@pytest.fixture(scope="module")
async def api(servers: str, tmp_path_factory: pytest.TempPathFactory, serve_order_api: ServeApi,
              ) -> AsyncIterator[Api]:
    tmp = tmp_path_factory.mktemp("order-faults")
    settings = settings_for(OrderSettings, secrets_dir=str(tmp / "secrets"), order_burst_per_account=100_000)
    assert isinstance(settings, OrderSettings)
    await reset_service(SERVICE, settings)
    pool = await create_pool(settings.database_url, max_size=settings.db_pool_max)
    admin = await asyncpg.connect(settings.database_url)
    try:
        async with serve_order_api(settings, pool) as (client, _):
            yield Api(client, settings, admin, serve_order_api)
    finally:
        await admin.close()
        await pool.close()


async def test_a_query_the_server_cuts_answers_503_with_retry_after(api: Api) -> None:
    order_id, auth = await api.order()
    path = f"/v1/orders/{order_id}"
    assert (await answer(api.client, path, auth))[0] == 200

    async with api.admin.transaction():
        await api.admin.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        reading = asyncio.create_task(answer(api.client, path, auth))
        blocked = await eventually(
            lambda: api.admin.fetch(f"SELECT pid FROM pg_stat_activity WHERE {OTHERS} AND wait_event_type = 'Lock'"),
            message="the api's query waiting on the lock")
        assert await api.admin.fetchval("SELECT bool_and(pg_terminate_backend(pid)) FROM unnest($1::int[]) pid",
                                        [r["pid"] for r in blocked])
        assert_fault_answer(*await reading)
    # the lock is gone: the pool replaced the dead connection and the order reads again
    status, body, _ = await answer(api.client, path, auth)
    assert (status, body["order_id"]) == (200, order_id)


async def test_idle_pooled_connections_killed_never_answer_500(api: Api) -> None:
    order_id, auth = await api.order()
    path = f"/v1/orders/{order_id}"
    killed = [r["pid"] for r in await api.admin.fetch(f"SELECT pid FROM pg_stat_activity WHERE {OTHERS}")]
    assert killed, "the api holds pooled connections"
    await api.admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", killed)

    async def gone() -> bool:
        return not await api.admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", killed)

    await eventually(gone, message="the killed backends to exit")
    for _ in range(2 * api.settings.db_pool_max):  # every pooled connection is dead: each is met once
        status, body, retry_after = await answer(api.client, path, auth)
        if status != 200:
            assert_fault_answer(status, body, retry_after)

    async def reads() -> bool:
        return (await answer(api.client, path, auth))[0] == 200

    await eventually(reads, message="the order readable again")


@contextlib.asynccontextmanager
async def hanging_up_server() -> AsyncIterator[int]:
    """A TCP server that accepts a connection and closes it at once, before any answer (as a
    PostgreSQL going down or still starting can); yields its port."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_server_hanging_up_during_the_handshake_answers_503_with_retry_after(api: Api) -> None:
    order_id, auth = await api.order()
    async with hanging_up_server() as port:
        settings = api.settings.model_copy(update={"database_url": f"postgresql://root@127.0.0.1:{port}/gone"})
        pool = await create_pool(settings.database_url, min_size=0, max_size=2)
        try:
            async with api.serve(settings, pool) as (client, _):
                assert_fault_answer(*await answer(client, f"/v1/orders/{order_id}", auth))
                assert_fault_answer(*await answer(client, "/v1/orders", auth, {"quantity": 1}))
        finally:
            pool.terminate()
