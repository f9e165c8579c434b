"""The payment service against the real PostgreSQL and RabbitMQ.

One migrated database and one in-process worker per test module (not per session: a worker left
consuming this session's queues and database would take the messages of the cross-service tests
that run later in the same pytest run, whose platform resets the same database); the API is built in-process
(``build_api``) and served by an aiohttp ``TestServer``; banks are ``BankSimulator``s using keys
generated for the session and listed in a partners file under ``tmp_path``. Orders reach the
worker as ``order.placed.v1`` messages published to the broker, exactly as the order service's
relay would publish them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from emeterai_shared.contracts import Message, decode
from emeterai_shared.contracts.events import OrderPlaced
from emeterai_shared.db import create_pool
from emeterai_shared.messaging import EVENTS
from emeterai_testkit.fixtures import Harness, eventually, reset_service, running, serve_api, settings_for
from payment_service.adapters.banks import generate_bank_keys, new_bank_config
from payment_service.adapters.banksim import BankSimulator
from payment_service.bootstrap import SERVICE
from payment_service.config import PaymentSettings
from payment_service.dependencies import PaymentDeps

PARTNER_SERVICE_IDS = {"bank-a": "77001", "bank-b": "88002", "bank-r": "99003"}
"""bank-a: the default bank; bank-b: a second bank; bank-r: used only by the reconcile test."""


@dataclass(frozen=True)
class BankKeys:
    config: dict[str, str]
    private_pem: bytes


@pytest.fixture(scope="session")
def bank_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, BankKeys], Path]:
    """The session's partner banks and the partners file listing them."""
    banks = {}
    for client_id, psid in PARTNER_SERVICE_IDS.items():
        private_pem, public_pem = generate_bank_keys()
        config = new_bank_config(public_pem, client_id=client_id, partner_service_id=psid)
        if client_id == "bank-b":
            config["name"] = "Bank Dua (uji)"  # a display name; the others show their client id
        banks[client_id] = BankKeys(config, private_pem)
    path = tmp_path_factory.mktemp("partners") / "banks.json"
    path.write_text(json.dumps({"banks": [b.config for b in banks.values()]}))
    return banks, path


@dataclass
class Payment:
    """The running service and helpers to drive and observe it."""

    settings: PaymentSettings
    harness: Harness
    base_url: str
    keys: dict[str, BankKeys]

    @property
    def pool(self) -> asyncpg.Pool:
        return self.harness.pool

    @property
    def deps(self) -> PaymentDeps:
        """The dependencies the worker's handlers and periodic jobs run with."""
        deps = self.harness.deps
        assert isinstance(deps, PaymentDeps)
        return deps

    async def new_pool(self) -> asyncpg.Pool:
        return await create_pool(self.settings.database_url, max_size=4)

    def api(self, pool: asyncpg.Pool) -> AbstractAsyncContextManager[str]:
        """Another api process on its own pool; yields its base URL."""
        return serve_api(SERVICE, self.settings, pool)

    def bank(self, client_id: str = "bank-a", base_url: str | None = None) -> BankSimulator:
        keys = self.keys[client_id]
        return BankSimulator.from_config(base_url or self.base_url, keys.config, keys.private_pem)

    async def publish(self, message: Message, *, message_id: str | None = None,
                      correlation_id: str | None = None) -> str:
        """Publish ``message`` to the broker as a producer's relay would; returns its id."""
        message_id = message_id or str(uuid4())
        await self.harness.publisher.publish(exchange=EVENTS, routing_key=message.TYPE, body=message.to_json(),
                                             message_id=message_id, message_type=message.TYPE,
                                             correlation_id=correlation_id)
        return message_id

    async def place_order(self, amount: int = 12_500, *, bank: str | None = None,
                          quantity: int = 1) -> dict[str, Any]:
        """Publish ``order.placed.v1`` and wait for the bill the worker issues; returns its row."""
        order_id = uuid4()
        await self.publish(OrderPlaced(order_id=order_id, account_id=uuid4(), quantity=quantity, amount=amount,
                                       bank=bank, placed_at=datetime.now(UTC)), correlation_id=str(order_id))
        return dict(await eventually(lambda: self.pool.fetchrow("SELECT * FROM bills WHERE order_id = $1", order_id),
                                     message=f"the bill of order {order_id}"))

    async def bill(self, bill_id: UUID) -> dict[str, Any]:
        return dict(await self.pool.fetchrow("SELECT * FROM bills WHERE bill_id = $1", bill_id))

    async def events(self, message_type: str, order_id: UUID) -> list[Message]:
        """The outbox messages of ``message_type`` written for ``order_id``."""
        rows = await self.pool.fetch("SELECT body FROM outbox WHERE message_type = $1 AND correlation_id = $2 "
                                     "ORDER BY id", message_type, str(order_id))
        return [decode(message_type, r["body"]) for r in rows]

    async def state(self) -> str:
        """Bills, payments, refunds and outbox rows, to compare before and after a rejection."""
        return json.dumps(await self.pool.fetchval(
            """SELECT json_build_object(
                 'bills', (SELECT json_agg(b ORDER BY bill_id) FROM bills b),
                 'payments', (SELECT json_agg(p ORDER BY payment_id) FROM payments p),
                 'refunds', (SELECT json_agg(r ORDER BY refund_id) FROM refunds r),
                 'outbox', (SELECT count(*) FROM outbox))"""
        ), sort_keys=True)


@pytest.fixture(scope="module")
async def payment(servers: str, bank_keys: tuple[dict[str, BankKeys], Path]) -> AsyncIterator[Payment]:
    keys, partners_file = bank_keys
    settings = settings_for(PaymentSettings, partners_file=str(partners_file))
    assert isinstance(settings, PaymentSettings)
    await reset_service(SERVICE, settings)
    async with running(SERVICE, settings, relay=False) as harness:
        api_pool = await create_pool(settings.database_url, max_size=settings.db_pool_max)
        try:
            async with serve_api(SERVICE, settings, api_pool) as base_url:
                yield Payment(settings, harness, base_url, keys)
        finally:
            await api_pool.close()
