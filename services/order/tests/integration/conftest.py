"""The order API in-process: ``build_api`` over the service's dependencies, served by an aiohttp
``TestServer`` on a pool of the test's choosing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from emeterai_shared.runtime import Resources, assemble, build_api
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings
from order_service.dependencies import OrderDeps

Client = TestClient[web.Request, web.Application]
ServeApi = Callable[[OrderSettings, asyncpg.Pool], AbstractAsyncContextManager[tuple[Client, OrderDeps]]]


@asynccontextmanager
async def _serve(settings: OrderSettings, pool: asyncpg.Pool) -> AsyncIterator[tuple[Client, OrderDeps]]:
    """An api process of the order service on ``pool``: its test client and its dependencies."""
    resources = Resources(settings=settings, pool=pool)
    process = await assemble(SERVICE, resources)
    client: Client = TestClient(TestServer(build_api(SERVICE, process)))
    await client.start_server()
    try:
        yield client, process.deps
    finally:
        await client.close()
        for closer in reversed(resources.closers):
            await closer()


@pytest.fixture(scope="session")
def serve_order_api() -> ServeApi:
    return _serve
