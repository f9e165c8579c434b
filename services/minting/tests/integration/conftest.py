"""The minting service against the real PostgreSQL and RabbitMQ.

One migrated database per session, with 5 000 serials of stock and a signing key generated under
``tmp_path``; the API is built in-process (``build_api``) and served by an aiohttp
``TestServer``. Paid orders and stamped documents reach the worker as ``order.paid.v1`` and
``stamping.document_stamped.v1`` published to the ``events`` exchange exactly as the order and
stamping relays would. Each test runs its own in-process worker (``minting.worker()``) when it
needs one, so that the crash test can hand the queues to a worker subprocess.
"""

from __future__ import annotations

import random
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import pytest
from emeterai_shared.config import ServiceSettings
from emeterai_shared.contracts import Message, decode
from emeterai_shared.contracts.events import DocumentStamped, OrderPaid, SerialsIssued
from emeterai_shared.db import create_pool
from emeterai_shared.failpoints import ENV as FAILPOINTS_ENV
from emeterai_shared.messaging import EVENTS, Publisher, connect
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import (
    Harness,
    eventually,
    reset_service,
    running,
    serve_api,
    settings_env,
    settings_for,
    spawn,
)
from jwt import PyJWKSet
from minting_service.bootstrap import SERVICE
from minting_service.config import MintingSettings
from minting_service.domain.serial import is_valid
from minting_service.domain.token import verify_token
from minting_service.service_layer.stock import add_stock

INITIAL_STOCK = 5_000


class WorkerProcess:
    """``python -m minting_service worker`` with the session's settings; output drained."""

    def __init__(self, settings: ServiceSettings, failpoints: str = "") -> None:
        env = settings_env(settings)
        env.pop(FAILPOINTS_ENV, None)
        if failpoints:
            env[FAILPOINTS_ENV] = failpoints
        self.popen = spawn("minting_service", "worker", env)
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.append(raw.decode("utf-8", "replace"))

    def wait(self, timeout_s: float = 60) -> int:
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError("worker did not exit:\n" + "".join(self.lines)) from exc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@dataclass
class Minting:
    """The service's database and API, and helpers to drive and observe them."""

    settings: MintingSettings
    pool: asyncpg.Pool
    publisher: Publisher
    base_url: str
    http: aiohttp.ClientSession

    def worker(self, **overrides: Any) -> AbstractAsyncContextManager[Harness]:
        """An in-process worker (no relay: outgoing messages stay in the outbox to be counted)."""
        return running(SERVICE, self.settings.model_copy(update=overrides), relay=False)

    @staticmethod
    def worker_process(settings: ServiceSettings, failpoints: str = "") -> WorkerProcess:
        """A real worker process (for SIGKILL tests)."""
        return WorkerProcess(settings, failpoints)

    def api(self, pool: asyncpg.Pool | None = None, **overrides: Any) -> AbstractAsyncContextManager[str]:
        """Another api process (other settings, or another pool); yields its base URL."""
        return serve_api(SERVICE, self.settings.model_copy(update=overrides), pool or self.pool)

    async def publish(self, message: Message, *, message_id: str | None = None) -> str:
        """Publish ``message`` to the broker as its producer's relay would; returns its id."""
        message_id = message_id or str(uuid4())
        correlation_id = str(getattr(message, "order_id", "")) or None
        await self.publisher.publish(exchange=EVENTS, routing_key=message.TYPE, body=message.to_json(),
                                     message_id=message_id, message_type=message.TYPE,
                                     correlation_id=correlation_id)
        return message_id

    @staticmethod
    def order(quantity: int) -> OrderPaid:
        return OrderPaid(order_id=uuid4(), account_id=uuid4(), quantity=quantity, amount=quantity * 12_500,
                         paid_at=datetime.now(UTC))

    @staticmethod
    def stamped(sn: str, stamping_id: UUID | None = None) -> DocumentStamped:
        return DocumentStamped(stamping_id=stamping_id or uuid4(), account_id=uuid4(), sn=sn,
                               document_sha256=random.randbytes(32).hex(), stamped_at=datetime.now(UTC))

    async def issuance(self, order_id: UUID) -> asyncpg.Record:
        """The order's issuance, once the worker has recorded it."""
        return await eventually(lambda: self.pool.fetchrow("SELECT * FROM issuances WHERE order_id = $1", order_id),
                                message=f"the issuance of order {order_id}")

    async def serials_of(self, order_id: UUID) -> list[str]:
        rows = await self.pool.fetch("SELECT sn FROM serials WHERE order_id = $1 ORDER BY sn", order_id)
        return [r["sn"] for r in rows]

    async def events(self, message_type: str, order_id: UUID | None = None) -> list[Message]:
        """Outbox messages of ``message_type`` (for ``order_id``), oldest first."""
        rows = await self.pool.fetch(
            "SELECT body FROM outbox WHERE message_type = $1 AND ($2::text IS NULL OR correlation_id = $2) "
            "ORDER BY id", message_type, str(order_id) if order_id else None)
        return [decode(message_type, r["body"]) for r in rows]

    async def handled(self, queue: str, message_id: str) -> bool:
        """The worker has committed this delivery (its inbox row exists)."""
        return bool(await self.pool.fetchval("SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2",
                                             queue, message_id))

    async def assert_issued_exactly_once(self, orders: list[OrderPaid]) -> None:
        """Every order: ISSUED, exactly its quantity of distinct valid serials whose tokens verify
        with the published keys alone, and exactly one announcement."""
        public = {k.key_id: k.key for k in PyJWKSet.from_dict((await self.get("/v1/keys"))[1]).keys}
        everything: list[str] = []
        for order in orders:
            issuance = await self.issuance(order.order_id)
            assert (issuance["status"], issuance["quantity"]) == ("ISSUED", order.quantity)
            serials = await self.serials_of(order.order_id)
            assert len(serials) == order.quantity and all(is_valid(sn) for sn in serials)
            [issued] = await self.events(SerialsIssued.TYPE, order.order_id)
            assert isinstance(issued, SerialsIssued)
            assert (issued.order_id, issued.account_id, issued.partner_id) == \
                (order.order_id, order.account_id, order.partner_id)
            assert sorted(s.sn for s in issued.serials) == serials
            for s in issued.serials:
                claims = verify_token(s.token, public)
                assert (claims["sn"], claims["ord"], claims["fv"]) == (s.sn, str(order.order_id), 10_000)
            everything += serials
        assert len(set(everything)) == len(everything) == sum(o.quantity for o in orders)

    async def stock(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM serials WHERE status = 'STOCK'"))

    async def get(self, path: str, base_url: str | None = None) -> tuple[int, Any, dict[str, str]]:
        async with self.http.get((base_url or self.base_url) + path) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


@pytest.fixture(scope="session")
async def minting(servers: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Minting]:
    secrets_dir: Path = tmp_path_factory.mktemp("secrets")
    settings = settings_for(MintingSettings, secrets_dir=str(secrets_dir), registry_rate_per_s=10_000.0,
                            registry_burst=10_000)
    assert isinstance(settings, MintingSettings)
    await reset_service(SERVICE, settings)
    pool = await create_pool(settings.database_url, max_size=8)
    connection = await connect(settings.amqp_url, name="minting-test-publisher")
    publisher = Publisher(connection, app_id="minting-test", timeout=settings.publish_timeout_s)
    try:
        async with unit_of_work(pool) as uow:
            await add_stock(uow, INITIAL_STOCK)
        async with serve_api(SERVICE, settings, pool) as base_url, aiohttp.ClientSession() as http:
            yield Minting(settings, pool, publisher, base_url, http)
    finally:
        await publisher.close()
        await connection.close()
        await pool.close()

