"""Statements sent to PostgreSQL per step of a buyer's purchase, pinned so that a change that adds
round trips to the hot path fails here (the rush measures the same with ``db_count_queries``).

One buyer as the rush plays one: a sign-in code (``POST /v1/auth/otp``), sign-in
(``POST /v1/auth/token``), ``POST /v1/orders``, ``GET /v1/orders/{id}`` while it waits, and in the
worker the text sent (``TextDispatcher``: one claim and one finish per batch of texts, no message),
the bill (``on_bill_issued``), the payment with its receipt (``on_payment_captured``) and the
serials (``on_serials_issued``), each applied by the real consumer runtime (``Consumer._apply``:
BEGIN, the inbox row, the handler, the outbox rows, COMMIT), one message per transaction as in the
worst case (in a batch, BEGIN and COMMIT are shared).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from emeterai_shared.contracts import Message
from emeterai_shared.contracts.events import BillIssued, IssuedSerial, PaymentCaptured, SerialsIssued, SmsRequested
from emeterai_shared.db import QueryCounter, create_pool
from emeterai_shared.messaging.consumer import Consumer, Envelope
from emeterai_testkit.fixtures import reset_service, settings_for
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings
from order_service.dependencies import OrderDeps

Client = TestClient[web.Request, web.Application]
ServeApi = Callable[[OrderSettings, asyncpg.Pool], AbstractAsyncContextManager[tuple[Client, OrderDeps]]]

NOT_THE_STEPS = ("FROM orders WHERE billed_at IS NULL", "typeinfo_tree", "set_config('jit'")
"""Statements no step sends: the api's admission sampler (``OrderRepository.admission_sample``, a
timer), and asyncpg's introspection of a type it meets for the first time on a connection (once
per connection and type: which step meets it first depends on the connection the pool hands out)."""

MOST = {
    "POST /v1/auth/otp": 1,  # limits counted + code + its text while they hold, no transaction (was 5)
    "POST /v1/auth/token": 5,  # BEGIN, code, code used + account, account + session + token, COMMIT (was 8)
    "POST /v1/orders": 1,  # key with its answer + order + history + outbox, no transaction (was 7)
    "POST /v1/orders again": 2,  # the same statement, which claims nothing, and the first answer read
    "POST /v1/orders (registered account)": 2,  # + the check for a token without a session (was 8)
    "GET /v1/orders/{id} unpaid": 1,
    "GET /v1/orders/{id} paid": 1,  # the order with its refunds (was 2)
    "GET /v1/orders/{id} long poll, unchanged": 0,  # the watch's looks compare its tag (was 1: the view read first)
    "sign-in texts": 2,  # the batch claimed, the batch finished: no message (was BEGIN, inbox, COMMIT + a relay's)
    "order.on_bill_issued": 4,  # BEGIN, inbox, one UPDATE, COMMIT (was 5)
    "order.on_payment_captured": 6,  # BEGIN, inbox, order, receipt, order + history + outbox, COMMIT (was 10)
    "order.on_serials_issued": 5,  # BEGIN, inbox, order + serials taken, order + history + serials, COMMIT (was 8)
}
"""The most statements each step may send (BEGIN and COMMIT included)."""

WATCH_LOOK = "FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS w"
"""The order watch's look (``OrderRepository.stale``): one statement per interval for every long poll
waiting in the process, not a step's."""


class Recorder(QueryCounter):
    """The pool's statement counter, keeping each statement's text too."""

    def __init__(self) -> None:
        super().__init__("order", "round-trips-test")
        self.statements: list[str] = []

    def __call__(self, record: Any) -> None:
        super().__call__(record)
        self.statements.append(" ".join(record.query.split()))

    async def during(self, step: Awaitable[Any]) -> tuple[Any, list[str]]:
        """What ``step`` returns, and the statements sent meanwhile (the admission sampler's left out)."""
        await asyncio.sleep(0)  # asyncpg calls loggers with call_soon: let earlier ones land first
        start = len(self.statements)
        result = await step
        await asyncio.sleep(0)
        return result, [s for s in self.statements[start:] if not any(n in s for n in NOT_THE_STEPS)]


@dataclass
class World:
    client: Client
    deps: OrderDeps
    pool: asyncpg.Pool
    recorder: Recorder
    consumer: Consumer
    counts: dict[str, list[str]] = field(default_factory=dict)

    async def http(self, name: str, call: Awaitable[ClientResponse], status: int) -> Any:
        resp, sent = await self.recorder.during(call)
        assert resp.status == status, await resp.text()
        self.counts[name] = sent
        return await resp.json()

    async def consume(self, queue: str, message: Message) -> None:
        [sub] = [lane.subscription for lane in self.consumer._lanes if lane.subscription.queue == queue]
        env = Envelope(message_id=str(uuid.uuid4()), type=message.TYPE, correlation_id=None, timestamp=None,
                       attempt=1, headers={}, body=message)
        outcome, sent = await self.recorder.during(self.consumer._apply(sub, [env]))
        assert outcome == ["done"], outcome
        self.counts[queue] = sent


@pytest.fixture
async def world(servers: str, tmp_path: Path, serve_order_api: ServeApi) -> AsyncIterator[World]:
    settings = settings_for(OrderSettings, secrets_dir=str(tmp_path / "secrets"), otp_client_limit=0,
                            otp_phone_interval_s=0, admission_sample_interval_s=3600.0)
    assert isinstance(settings, OrderSettings)
    await reset_service(SERVICE, settings)
    recorder = Recorder()
    pool = await create_pool(settings.database_url, max_size=4, count_queries=recorder)
    try:
        async with serve_order_api(settings, pool) as (client, deps):
            consumer = Consumer(pool=pool, connection=None, publisher=None,  # type: ignore[arg-type]
                                subscriptions=SERVICE.subscriptions, settings=settings, dependencies=deps)
            yield World(client, deps, pool, recorder, consumer)
    finally:
        await pool.close()


async def outbox(pool: asyncpg.Pool, message_type: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT convert_from(body, 'UTF8')::jsonb AS body FROM outbox WHERE message_type = $1"
                            " ORDER BY id", message_type)
    return [r["body"] for r in rows]


async def send_texts(deps: OrderDeps) -> None:
    """One tick of the worker's text dispatcher, and the batch it started, sent and recorded."""
    await deps.texts.tick()
    await deps.texts.settle()


def report(counts: dict[str, list[str]]) -> str:
    return "\n".join(f"{name}: {len(sent)}\n    " + "\n    ".join(sent) for name, sent in counts.items())


async def test_statements_per_step_of_a_purchase(world: World) -> None:
    client, pool = world.client, world.pool
    phone = "+6281377700001"
    await world.http("POST /v1/auth/otp", client.post("/v1/auth/otp", json={"phone": phone}), 202)
    [text] = await pool.fetch("SELECT body FROM sms_outbox WHERE phone = $1", phone)
    [code] = re.findall(r"[0-9]{6}", text["body"])
    signed_in = await world.http("POST /v1/auth/token", client.post(
        "/v1/auth/token", json={"phone": phone, "code": code}), 200)
    auth = {"Authorization": f"Bearer {signed_in['token']}"}
    once = {**auth, "Idempotency-Key": str(uuid.uuid4())}
    placed = await world.http("POST /v1/orders", client.post("/v1/orders", json={"quantity": 2}, headers=once), 202)
    order_id = uuid.UUID(placed["order_id"])
    again = await world.http("POST /v1/orders again", client.post("/v1/orders", json={"quantity": 2}, headers=once),
                             202)
    assert again == placed
    [announced] = await outbox(pool, "order.placed.v1")
    assert (announced["order_id"], announced["amount"]) == (placed["order_id"], 25_000)
    history = await pool.fetch("SELECT old_status, new_status, reason FROM order_history WHERE order_id = $1",
                               order_id)
    assert [tuple(r) for r in history] == [(None, "AWAITING_PAYMENT", "order placed")]
    await world.http("GET /v1/orders/{id} unpaid", client.get(f"/v1/orders/{order_id}", headers=auth), 200)
    etag = (await client.get(f"/v1/orders/{order_id}", headers=auth)).headers["ETag"]
    held, sent = await world.recorder.during(client.get(f"/v1/orders/{order_id}?wait_s=1",
                                                        headers={**auth, "If-None-Match": etag}))
    assert (held.status, held.headers["ETag"]) == (304, etag)
    world.counts["GET /v1/orders/{id} long poll, unchanged"] = [s for s in sent if WATCH_LOOK not in s]

    _, world.counts["sign-in texts"] = await world.recorder.during(send_texts(world.deps))
    assert await pool.fetchval("SELECT count(*) FROM sms_outbox") == 0
    sent = [json.loads(line) for line in Path(world.deps.settings.dev_sms_file).read_text().splitlines()]
    assert [(s["phone"], re.findall(r"[0-9]{6}", s["text"])) for s in sent] == [(phone, [code])]
    await world.consume("order.on_bill_issued", BillIssued(
        order_id=order_id, bill_id=uuid.uuid4(), bank="bank-bri", virtual_account_no="88081234000001",
        amount=placed["amount"], expires_at=datetime.now(UTC) + timedelta(hours=1)))
    await world.consume("order.on_payment_captured", PaymentCaptured(
        order_id=order_id, bill_id=uuid.uuid4(), payment_id=uuid.uuid4(), amount=placed["amount"], bank="bank-bri",
        payment_request_id="req-1", captured_at=datetime.now(UTC), reference_no="ref-1"))
    view = await world.http("GET /v1/orders/{id} paid", client.get(f"/v1/orders/{order_id}", headers=auth), 200)
    assert view["status"] == "PAID"
    account_id = uuid.UUID(signed_in["account_id"])
    await world.consume("order.on_serials_issued", SerialsIssued(
        order_id=order_id, account_id=account_id, issued_at=datetime.now(UTC),
        serials=tuple(IssuedSerial(sn=f"SN-RT-{i}", token=f"eyJ.{i}.sig") for i in range(2))))
    view = (await (await client.get(f"/v1/orders/{order_id}", headers=auth)).json())
    assert (view["status"], sorted(view["serials"])) == ("FULFILLED", ["SN-RT-0", "SN-RT-1"])
    receipt = await client.get(f"/v1/orders/{order_id}/receipt", headers={**auth, "Accept": "application/json"})
    assert receipt.status == 200 and (await receipt.json())["receipt_no"].endswith("-0000001")

    # an account registered with POST /v1/accounts (a token without a session) orders too
    registered = await (await client.post("/v1/accounts", json={"name": "Siti", "phone": "+6281377700002"})).json()
    await world.http("POST /v1/orders (registered account)", client.post(
        "/v1/orders", json={"quantity": 1},
        headers={"Authorization": f"Bearer {registered['token']}", "Idempotency-Key": str(uuid.uuid4())}), 202)

    print("\n" + report(world.counts))
    over = {name: (len(world.counts[name]), most) for name, most in MOST.items() if len(world.counts[name]) > most}
    assert not over, f"more round trips than pinned (sent, most): {over}\n{report(world.counts)}"


async def test_a_refused_code_request_writes_no_code_and_no_text(world: World) -> None:
    """The code request's one statement writes the code and its text only while the limits hold
    (``ORDER_OTP_PHONE_PER_HOUR``, 5): the sixth is refused, the fifth code stays the pending one."""
    client, pool = world.client, world.pool
    phone = "+6281377700009"
    for _ in range(5):
        await world.http("POST /v1/auth/otp", client.post("/v1/auth/otp", json={"phone": phone}), 202)
    pending = await pool.fetchval("SELECT digest FROM otp_codes WHERE phone = $1", phone)
    refused = await world.http("POST /v1/auth/otp refused", client.post("/v1/auth/otp", json={"phone": phone}), 429)
    assert refused["error"]["code"] == "rate_limited"
    assert len(world.counts["POST /v1/auth/otp refused"]) == 1
    assert await pool.fetchval("SELECT count(*) FROM sms_outbox WHERE phone = $1", phone) == 5
    assert await outbox(pool, SmsRequested.TYPE) == []  # texts travel without a message
    assert await pool.fetchval("SELECT digest FROM otp_codes WHERE phone = $1", phone) == pending
