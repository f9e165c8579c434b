"""The stamping service against the real PostgreSQL and RabbitMQ.

One migrated database per session. The buyer-token key pair is the order service's: here it is
created with ``ensure_keypair`` under ``tmp_path`` (the stamping settings point at its public
half), and a ``TokenIssuer`` on its private half issues the buyers' tokens. The API is served
in-process (``serve_api``); minting's ``minting.serials_issued.v1`` reaches the worker
(``running(..., relay=False)``) published to the ``events`` exchange exactly as minting's relay
would: persistent, ``message_id``, ``type`` = routing key, the model's JSON body.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest
from emeterai_shared.auth import TokenIssuer, ensure_keypair
from emeterai_shared.contracts import Message
from emeterai_shared.contracts.events import IssuedSerial, SerialsIssued
from emeterai_shared.db import create_pool
from emeterai_shared.messaging.topology import EVENTS
from emeterai_testkit.fixtures import eventually, reset_service, running, serve_api, settings_for
from prometheus_client import REGISTRY
from stamping_service.bootstrap import SERVICE
from stamping_service.config import StampingSettings
from stamping_service.entrypoints.messages import ON_SERIALS_ISSUED

SN_ALPHABET = string.digits + string.ascii_uppercase
PARTNER_ID, PARTNER_KEY = "casn", "casn-stamping-key-0123456789"


def serial() -> IssuedSerial:
    sn = "".join(random.choices(SN_ALPHABET, k=22))
    return IssuedSerial(sn=sn, token=f"token-of-{sn}")


def duplicates(queue: str) -> float:
    return REGISTRY.get_sample_value("emeterai_messages_consumed_total",
                                     {"queue": queue, "outcome": "duplicate"}) or 0.0


@dataclass
class Stamping:
    settings: StampingSettings
    pool: asyncpg.Pool
    issuer: TokenIssuer
    exchange: aio_pika.abc.AbstractExchange
    base_url: str
    http: aiohttp.ClientSession

    @staticmethod
    def issued(account_id: uuid.UUID, quantity: int) -> SerialsIssued:
        """minting.serials_issued.v1 for a new order of ``account_id`` with ``quantity`` serials."""
        return SerialsIssued(order_id=uuid.uuid4(), account_id=account_id,
                             serials=tuple(serial() for _ in range(quantity)), issued_at=datetime.now(UTC))

    async def publish(self, event: Message, message_id: str | None = None) -> str:
        """Publish ``event`` as its producer's relay does; returns its message id."""
        mid = message_id or str(uuid.uuid4())
        await self.exchange.publish(
            aio_pika.Message(event.to_json(), message_id=mid, type=event.TYPE,
                             correlation_id=str(getattr(event, "order_id", "")),
                             content_type="application/json", app_id="minting",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT, timestamp=datetime.now(UTC)),
            routing_key=event.TYPE, mandatory=True,
        )
        return mid

    async def applied(self, queue: str, message_id: str) -> None:
        """Wait until the worker committed ``message_id`` from ``queue`` (inbox row + effects)."""
        async def done() -> bool:
            n = await self.pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1 AND message_id = $2",
                                         queue, message_id)
            return bool(n == 1)

        await eventually(done, message=f"{queue} to apply {message_id}")

    async def send(self, event: SerialsIssued, message_id: str | None = None) -> str:
        mid = await self.publish(event, message_id)
        await self.applied(ON_SERIALS_ISSUED, mid)
        return mid

    async def redeliver(self, event: SerialsIssued, message_id: str) -> None:
        """The very same message again; returns once the inbox has absorbed it."""
        seen = duplicates(ON_SERIALS_ISSUED)
        await self.publish(event, message_id)
        await eventually(lambda: duplicates(ON_SERIALS_ISSUED) == seen + 1, message="the duplicate")

    async def quota(self, account_id: uuid.UUID) -> dict[str, Any]:
        status, body = await self.get_quota({"Authorization": f"Bearer {self.issuer.issue(account_id)}"})
        assert status == 200 and isinstance(body, dict), body
        return body

    async def get_quota(self, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.get(self.base_url + "/v1/quota", headers=headers or {}) as resp:
            return resp.status, await resp.json()

    async def upload(self, account: uuid.UUID, data: bytes, *, key: str | None = None,
                     **fields: Any) -> tuple[int, Any]:
        """``POST /v1/stampings`` as ``account``: page 1 at (72, 72) unless ``fields`` say otherwise."""
        form = aiohttp.FormData()
        form.add_field("file", data, filename="document.pdf", content_type="application/pdf")
        for name, value in {"page": 1, "x": 72, "y": 72, **fields}.items():
            form.add_field(name, str(value))
        headers = {"Authorization": f"Bearer {self.issuer.issue(account)}",
                   "Idempotency-Key": key or str(uuid.uuid4())}
        async with self.http.post(self.base_url + "/v1/stampings", data=form, headers=headers) as resp:
            return resp.status, await resp.json()

    async def rows(self, account_id: uuid.UUID) -> list[tuple[str, uuid.UUID, uuid.UUID, str, str]]:
        rows = await self.pool.fetch("SELECT sn, account_id, order_id, token, status FROM stamps "
                                     "WHERE account_id = $1 ORDER BY sn", account_id)
        return [(r["sn"], r["account_id"], r["order_id"], r["token"], r["status"]) for r in rows]


@pytest.fixture(scope="session")
async def stamping(servers: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stamping]:
    secrets_dir: Path = tmp_path_factory.mktemp("stamping-secrets")
    private_key = secrets_dir / "auth-ed25519.key"
    partners = secrets_dir / "partners.json"
    partners.write_text(json.dumps({"partners": [{"partner_id": PARTNER_ID, "api_key": PARTNER_KEY,
                                                  "webhook_secret": "whsec-test", "max_quantity": 5000}]}))
    # per-caller buckets and an admission limit far larger than any test's requests: no outcome
    # depends on how fast a bucket refills or how fast the worker drained earlier tests' jobs (the
    # rate-limit and admission tests set their own small limits)
    settings = settings_for(StampingSettings, secrets_dir=str(secrets_dir), partners_file=str(partners),
                            upload_burst_per_account=100_000, partner_upload_burst=100_000,
                            verify_burst=100_000, admission_min_limit=100_000)
    assert isinstance(settings, StampingSettings)
    assert ensure_keypair(private_key, Path(settings.auth_public_key_file))
    issuer = TokenIssuer(private_key.read_bytes(), timedelta(minutes=30))
    await reset_service(SERVICE, settings)
    pool = await create_pool(settings.database_url, max_size=4)
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS)
        async with running(SERVICE, settings, relay=False), serve_api(SERVICE, settings, pool) as base_url, \
                aiohttp.ClientSession() as http:
            yield Stamping(settings, pool, issuer, exchange, base_url, http)
    finally:
        await connection.close()
        await pool.close()
