"""Partner events, the pull feed and Standard Webhooks against the real PostgreSQL, RabbitMQ and HTTP.

The order worker runs in-process (``running``) with its ``partner-webhooks`` job run as the worker
runs it; the API answers through aiohttp's TestServer; each partner's webhook endpoint is a small
aiohttp server on a free local port. Receivers check nothing themselves: the tests verify every
signature independently with ``hmac`` over the exact bytes received.

* a partner's fulfilled order → ``order.fulfilled`` (serials and tokens) in the feed and as a signed
  webhook whose body is the feed's entry; a stamped serial of it → ``stamping.completed``; the same
  facts reported again add nothing; a stamping event that overtakes its serials is retried and
  still recorded after ``order.fulfilled``; a partner without ``webhook_url`` gets feed entries only;
* a partner's order whose bill expires → ``order.expired``; a failed stamping of its serial →
  ``stamping.failed``; each once however often reported;
* the feed: ordered and resumable pages, limits, 400 for bad parameters, 401 without a partner
  key, 403 for a buyer's token, never another partner's events;
* retries: 500 then 200; no answer (a timeout) then quick; down for a while then up: every event
  arrives, signed, and the bodies are the feed's entries;
* a partner whose endpoint hangs fills only its own lanes: another partner's webhooks are delivered
  while its requests are still hanging;
* past the maximum age a delivery is FAILED; ``webhooks resend`` (a real process) delivers it, and
  ``webhooks list`` / ``attempts`` show it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from emeterai_shared.contracts import Message
from emeterai_shared.contracts.events import (
    BillExpired,
    DocumentFailed,
    DocumentStamped,
    IssuedSerial,
    PaymentCaptured,
    SerialsIssued,
)
from emeterai_shared.db import create_pool
from emeterai_shared.messaging.topology import EVENTS
from emeterai_shared.runtime import Resources
from emeterai_testkit.fixtures import (
    REPO_ROOT,
    eventually,
    free_port,
    reset_service,
    running,
    settings_env,
    settings_for,
)
from order_service.adapters.partner_store import PartnerEventRepository
from order_service.adapters.partners import PARTNER_NAMESPACE
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings
from order_service.dependencies import OrderDeps
from order_service.domain import partner_events
from order_service.entrypoints.http import PartnerEventsPage
from prometheus_client import REGISTRY

Client = TestClient[web.Request, web.Application]
ServeApi = Callable[[OrderSettings, asyncpg.Pool], AbstractAsyncContextManager[tuple[Client, OrderDeps]]]
TIMEOUT_S = 5.0
"""The senders' timeout: ample for a local receiver on a loaded machine (an in-process receiver can
stall behind the event loop); the test of the timeout itself uses a receiver that never answers."""
UNIT_PRICE = 12_500
HOOK_PATH = "/hooks/emeterai"


def api_key(partner: str) -> str:
    return f"{partner}-api-key-0123456789"


def account_of(partner: str) -> uuid.UUID:
    return uuid.uuid5(PARTNER_NAMESPACE, partner)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


def verified(secret: str, got: Received) -> dict[str, Any]:
    """The body of a webhook after checking it as a partner would (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    msg_id, ts = got.headers["webhook-id"], got.headers["webhook-timestamp"]
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + got.body, hashlib.sha256).digest()
    assert f"v1,{base64.b64encode(mac).decode()}" in got.headers["webhook-signature"].split(" ")
    assert abs(time.time() - int(ts)) < 300  # a receiver's replay window
    assert got.headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(got.body)
    assert set(body) == {"id", "type", "created_at", "data"} and body["id"] == msg_id
    return body


@dataclass
class Receiver:
    """A partner's webhook endpoint: answers ``script`` in turn, then 200. With ``hang_first`` the
    first request is never answered (it waits until the receiver stops), so the sender's timeout
    fires whatever the machine's speed; with a ``gate`` every request waits until the gate opens."""

    secret: str
    script: list[int] = field(default_factory=list)
    hang_first: bool = False
    gate: asyncio.Event | None = None
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    answered: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hang_first and len(self.received) == 1:
                await asyncio.Event().wait()  # never set: only the receiver's shutdown ends it
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.in_flight -= 1
        self.answered += 1
        status = self.script.pop(0) if self.script else 200
        return web.Response(status=status, text="thanks" if status < 300 else "try later")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(HOOK_PATH, self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self.runner is not None:
            await self.runner.cleanup()

    def events(self) -> list[dict[str, Any]]:
        """Every body received, in arrival order, each signature verified."""
        return [verified(self.secret, got) for got in self.received]


def partners_file(path: Path, receivers: dict[str, Receiver], feed_only: Sequence[str] = ()) -> str:
    entries: list[dict[str, Any]] = [
        {"partner_id": pid, "api_key": api_key(pid), "webhook_url": r.url, "webhook_secret": r.secret,
         "max_quantity": 1000} for pid, r in receivers.items()]
    entries += [{"partner_id": pid, "api_key": api_key(pid), "max_quantity": 1000} for pid in feed_only]
    path.write_text(json.dumps({"partners": entries}))
    return str(path)


@asynccontextmanager
async def dispatching(settings: OrderSettings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """The worker's ``partner-webhooks`` job, run every interval as the worker runs it (with
    dependencies of its own, as a worker process has), then closed as the worker closes it."""
    [job] = [p for p in SERVICE.periodic if p.name == "partner-webhooks"]
    resources = Resources(settings=settings, pool=pool)
    deps = await SERVICE.dependencies(resources)
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await job.run(deps)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), job.interval(settings))

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await task
        for closer in reversed(resources.closers):
            await closer()


@dataclass
class World:
    settings: OrderSettings
    deps: OrderDeps
    client: Client
    exchange: aio_pika.abc.AbstractExchange
    receivers: dict[str, Receiver]
    tmp: Path

    async def publish(self, event: Message) -> str:
        mid = str(uuid.uuid4())
        await self.exchange.publish(
            aio_pika.Message(event.to_json(), message_id=mid, type=event.TYPE, content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT, timestamp=datetime.now(UTC)),
            routing_key=event.TYPE, mandatory=True)
        return mid

    async def val(self, query: str, *args: Any) -> Any:
        async with self.deps.pool.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        async with self.deps.pool.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def applied(self, queue: str, message_id: str) -> None:
        async def done() -> bool:
            n = await self.val("SELECT count(*) FROM inbox WHERE consumer = $1 AND message_id = $2", queue, message_id)
            return bool(n == 1)

        await eventually(done, message=f"{queue} to apply {message_id}")

    async def send(self, queue: str, event: Message) -> str:
        mid = await self.publish(event)
        await self.applied(queue, mid)
        return mid

    async def paid_order(self, partner: str, quantity: int = 2) -> uuid.UUID:
        """A partner's order placed through the API with its X-Api-Key, then paid."""
        resp = await self.client.post("/v1/orders", json={"quantity": quantity},
                                      headers={"X-Api-Key": api_key(partner), "Idempotency-Key": str(uuid.uuid4())})
        assert resp.status == 202, await resp.text()
        order_id = uuid.UUID((await resp.json())["order_id"])
        await self.send("order.on_payment_captured", PaymentCaptured(
            order_id=order_id, bill_id=uuid.uuid4(), payment_id=uuid.uuid4(), amount=quantity * UNIT_PRICE,
            bank="bank-bri", payment_request_id=f"req-{uuid.uuid4().hex[:12]}", captured_at=datetime.now(UTC)))
        return order_id

    async def fulfilled(self, partner: str, quantity: int = 2) -> tuple[uuid.UUID, SerialsIssued]:
        order_id = await self.paid_order(partner, quantity)
        event = issued(order_id, partner, quantity)
        await self.send("order.on_serials_issued", event)
        return order_id, event

    async def feed(self, partner: str, query: str = "") -> dict[str, Any]:
        resp = await self.client.get(f"/v1/partner/events{query}", headers={"X-Api-Key": api_key(partner)})
        assert resp.status == 200, await resp.text()
        page: dict[str, Any] = await resp.json()
        PartnerEventsPage.model_validate(page)  # the documented schema
        return page

    async def deliveries(self, partner: str) -> list[Any]:
        return await self.fetch("SELECT d.*, e.event_id FROM webhook_deliveries d JOIN partner_events e"
                                " ON e.id = d.partner_event_id WHERE d.partner_id = $1 ORDER BY d.id", partner)

    async def delivered(self, partner: str, count: int, timeout_s: float = 30) -> list[Any]:
        """Wait until the partner has ``count`` deliveries, all DELIVERED."""
        async def done() -> list[Any] | None:
            rows = await self.deliveries(partner)
            return rows if len(rows) == count and all(r["status"] == "DELIVERED" for r in rows) else None

        found: list[Any] = await eventually(done, timeout_s=timeout_s, message=f"{count} deliveries to {partner}")
        return found

    async def attempts(self, delivery_id: int) -> list[tuple[int | None, str | None]]:
        rows = await self.fetch("SELECT status_code, error FROM delivery_attempts WHERE delivery_id = $1 ORDER BY id",
                                delivery_id)
        return [(r["status_code"], r["error"]) for r in rows]

    async def cli(self, *args: str) -> tuple[int, list[dict[str, Any]]]:
        """``python -m order_service webhooks ...`` as an operator runs it."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "order_service", "webhooks", *args, env=settings_env(self.settings),
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        assert proc.returncode in (0, 1), err.decode()
        return proc.returncode, [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def issued(order_id: uuid.UUID, partner: str, quantity: int) -> SerialsIssued:
    return SerialsIssued(
        order_id=order_id, account_id=account_of(partner), partner_id=partner, issued_at=datetime.now(UTC),
        serials=tuple(IssuedSerial(sn=f"SN-{uuid.uuid4().hex[:16].upper()}", token=f"eyJ.{uuid.uuid4().hex}.sig")
                      for _ in range(quantity)))


def stamped(sn: str, partner: str) -> DocumentStamped:
    return DocumentStamped(stamping_id=uuid.uuid4(), account_id=account_of(partner), sn=sn,
                           document_sha256=hashlib.sha256(sn.encode()).hexdigest(), stamped_at=datetime.now(UTC))


def whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture(scope="module")
async def world(servers: str, tmp_path_factory: pytest.TempPathFactory, serve_order_api: ServeApi,
                ) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("order-webhooks")
    receivers = {
        "casn": Receiver(whsec()),
        "flaky": Receiver("flaky plain secret", script=[500]),
        "sleepy": Receiver(whsec(), hang_first=True),
        "late": Receiver("late plain secret"),
        "gone": Receiver(whsec()),
    }
    settings = settings_for(
        OrderSettings, secrets_dir=str(tmp / "secrets"),
        partners_file=partners_file(tmp / "partners.json", receivers, feed_only=("feedonly", "reader", "lapsed")),
        webhook_timeout_s=TIMEOUT_S, webhook_backoff_initial_s=0.2, webhook_backoff_max_s=1.0,
        webhook_dispatch_interval_s=0.1, webhook_concurrency_per_partner=2,
        retry_delays_ms=[200, 1000, 3000, 10000])
    assert isinstance(settings, OrderSettings)
    await reset_service(SERVICE, settings)
    for pid in ("casn", "flaky", "sleepy"):  # "late" and "gone" are down for now
        await receivers[pid].start()
    pool = await create_pool(settings.database_url, max_size=settings.db_pool_max)
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS)
        async with (serve_order_api(settings, pool) as (client, deps), running(SERVICE, settings, relay=False),
                    dispatching(settings, pool)):
            yield World(settings, deps, client, exchange, receivers, tmp)
    finally:
        for receiver in receivers.values():
            await receiver.stop()
        await connection.close()
        await pool.close()


async def test_fulfilled_partner_order_is_in_the_feed_and_delivered_signed(world: World) -> None:
    casn = world.receivers["casn"]
    order_id, event = await world.fulfilled("casn")
    resp = await world.client.get(f"/v1/orders/{order_id}", headers={"X-Api-Key": api_key("casn")})
    view = await resp.json()
    assert (view["status"], view["serials"]) == ("FULFILLED", [s.sn for s in event.serials])

    page = await world.feed("casn")
    [fulfilled] = page["events"]
    assert datetime.fromisoformat(fulfilled["created_at"]).tzinfo is not None
    assert fulfilled == {"id": fulfilled["id"], "type": "order.fulfilled", "created_at": fulfilled["created_at"],
                         "data": {"order_id": str(order_id), "quantity": 2,
                                  "serials": [{"sn": s.sn, "token": s.token} for s in event.serials]}}
    [delivery] = await world.delivered("casn", 1)
    assert str(delivery["event_id"]) == fulfilled["id"]
    assert await world.attempts(delivery["id"]) == [(200, None)]
    assert casn.events() == page["events"]  # the very bytes signed are the feed's entry

    # A document stamped with one of its serials, reported twice (new message ids): one event.
    stamping = stamped(event.serials[1].sn, "casn")
    await world.send("order.on_document_stamped", stamping)
    await world.send("order.on_document_stamped", stamping)
    page = await world.feed("casn")
    assert [e["type"] for e in page["events"]] == ["order.fulfilled", "stamping.completed"]
    completed = page["events"][1]["data"]
    assert completed == {"stamping_id": str(stamping.stamping_id), "sn": event.serials[1].sn,
                         "order_id": str(order_id), "document_sha256": stamping.document_sha256,
                         "stamped_at": completed["stamped_at"]}
    assert datetime.fromisoformat(completed["stamped_at"]) == stamping.stamped_at
    await world.delivered("casn", 2)
    assert casn.events() == page["events"]

    # The same serials again (a new message id) change nothing and tell the partner nothing new.
    await world.send("order.on_serials_issued", event)
    assert (await world.feed("casn"))["events"] == page["events"]
    assert len(await world.deliveries("casn")) == 2


async def test_stamping_that_overtakes_its_serials_is_recorded_after_them(world: World) -> None:
    order_id = await world.paid_order("feedonly")
    event = issued(order_id, "feedonly", 2)

    def retried() -> float:
        return REGISTRY.get_sample_value("emeterai_messages_consumed_total",
                                         {"queue": "order.on_document_stamped", "outcome": "retried"}) or 0.0

    before = retried()
    stamping_mid = await world.publish(stamped(event.serials[0].sn, "feedonly"))
    await eventually(lambda: retried() > before, message="the stamping event to be retried")
    await world.send("order.on_serials_issued", event)
    await world.applied("order.on_document_stamped", stamping_mid)

    page = await world.feed("feedonly")
    assert [(e["type"], e["data"]["order_id"]) for e in page["events"]] == [
        ("order.fulfilled", str(order_id)), ("stamping.completed", str(order_id))]
    assert page["events"][1]["data"]["sn"] == event.serials[0].sn
    assert await world.deliveries("feedonly") == []  # no webhook_url: the feed only


async def test_expired_order_and_failed_stamping_reach_the_partner_once(world: World) -> None:
    resp = await world.client.post("/v1/orders", json={"quantity": 3},
                                   headers={"X-Api-Key": api_key("lapsed"), "Idempotency-Key": str(uuid.uuid4())})
    assert resp.status == 202, await resp.text()
    unpaid = uuid.UUID((await resp.json())["order_id"])
    expired_at = datetime.now(UTC)
    expiry = BillExpired(order_id=unpaid, bill_id=uuid.uuid4(), expired_at=expired_at)
    await world.send("order.on_bill_expired", expiry)
    await world.send("order.on_bill_expired", expiry)  # again, under another message id
    [expired] = (await world.feed("lapsed"))["events"]
    assert expired == {"id": expired["id"], "type": "order.expired", "created_at": expired["created_at"],
                       "data": {"order_id": str(unpaid), "quantity": 3, "amount": 3 * UNIT_PRICE,
                                "expired_at": expired["data"]["expired_at"]}}
    assert datetime.fromisoformat(expired["data"]["expired_at"]) == expired_at

    order_id, issuance = await world.fulfilled("lapsed")
    failure = DocumentFailed(stamping_id=uuid.uuid4(), account_id=account_of("lapsed"), sn=issuance.serials[0].sn,
                             error="the document cannot be stamped: broken", failed_at=datetime.now(UTC))
    await world.send("order.on_document_failed", failure)
    await world.send("order.on_document_failed", failure)
    page = await world.feed("lapsed")
    assert [e["type"] for e in page["events"]] == ["order.expired", "order.fulfilled", "stamping.failed"]
    failed = page["events"][2]["data"]
    assert failed == {"stamping_id": str(failure.stamping_id), "sn": issuance.serials[0].sn,
                      "order_id": str(order_id), "error": failure.error, "failed_at": failed["failed_at"]}
    PartnerEventsPage.model_validate(page)  # the documented bodies


async def test_feed_pages_in_order_resume_and_refuse_bad_requests(world: World) -> None:
    made = []
    async with world.deps.pool.acquire() as conn:
        for i in range(5):
            async with conn.transaction():
                for partner in ("reader", "someone-else"):
                    made.append(partner_events.stamping_completed(
                        order_id=uuid.uuid4(), stamping_id=uuid.uuid4(), sn=f"SN-{partner}-{i}",
                        document_sha256="ab" * 32, stamped_at=datetime.now(UTC), at=datetime.now(UTC)))
                    await PartnerEventRepository(conn).add_event(partner, made[-1], deliver=False)
    mine = [e.body() for e in made[::2]]

    everything = await world.feed("reader", "?limit=500")
    assert everything["events"] == mine
    assert (await world.feed("reader"))["events"] == mine  # after=0, limit=100 by default
    first = await world.feed("reader", "?limit=2")
    second = await world.feed("reader", f"?after={first['next']}&limit=2")
    third = await world.feed("reader", f"?after={second['next']}")
    assert [first["events"], second["events"], third["events"]] == [mine[:2], mine[2:4], mine[4:]]
    assert third["next"] == everything["next"]
    assert await world.feed("reader", f"?after={third['next']}") == {"events": [], "next": third["next"]}

    for query in ("?after=-1", "?after=abc", "?after=1.5", "?after=", "?after=99999999999999999999",
                  "?limit=0", "?limit=501", "?limit=ten", "?limit=-5"):
        resp = await world.client.get(f"/v1/partner/events{query}", headers={"X-Api-Key": api_key("reader")})
        assert resp.status == 400, query
        assert (await resp.json())["error"]["code"] == "invalid_parameter"

    resp = await world.client.get("/v1/partner/events")
    assert resp.status == 401
    resp = await world.client.get("/v1/partner/events", headers={"X-Api-Key": "not-a-partner-key-0123456789"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (401, "invalid_api_key")
    resp = await world.client.post("/v1/accounts", json={"name": "Siti Aminah", "phone": "+6281234567890"})
    token = (await resp.json())["token"]
    resp = await world.client.get("/v1/partner/events", headers={"Authorization": f"Bearer {token}"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "partner_only")


async def test_receiver_answering_500_is_retried_until_2xx(world: World) -> None:
    await world.fulfilled("flaky")
    [delivery] = await world.delivered("flaky", 1)
    assert await world.attempts(delivery["id"]) == [(500, "HTTP 500: try later"), (200, None)]
    first, second = world.receivers["flaky"].events()
    assert first == second == (await world.feed("flaky"))["events"][0]
    assert [r.headers["webhook-id"] for r in world.receivers["flaky"].received] == [first["id"]] * 2
    for outcome in ("PENDING", "DELIVERED"):
        assert REGISTRY.get_sample_value("emeterai_webhook_attempts_total",
                                         {"partner": "flaky", "outcome": outcome}) == 1


async def test_receiver_slower_than_the_timeout_is_retried(world: World) -> None:
    await world.fulfilled("sleepy")
    [delivery] = await world.delivered("sleepy", 1)
    assert await world.attempts(delivery["id"]) == [(None, f"no answer within {TIMEOUT_S:g}s"), (200, None)]
    first, second = world.receivers["sleepy"].events()
    assert first == second == (await world.feed("sleepy"))["events"][0]


async def test_receiver_down_for_a_while_gets_every_event_signed(world: World) -> None:
    late = world.receivers["late"]
    orders = [(await world.fulfilled("late"))[0] for _ in range(3)]

    async def all_failed_twice() -> bool:
        rows = await world.deliveries("late")
        return len(rows) == 3 and all(r["attempts"] >= 2 and r["status"] == "PENDING" for r in rows)

    await eventually(all_failed_twice, message="the first attempts to fail")
    await late.start()
    rows = await world.delivered("late", 3)
    for row in rows:
        *failures, last = await world.attempts(row["id"])
        assert last == (200, None)
        assert len(failures) >= 2 and all(code is None and error for code, error in failures)

    feed = (await world.feed("late"))["events"]
    assert [e["data"]["order_id"] for e in feed] == [str(o) for o in orders]
    got = late.events()
    assert len(got) == 3
    assert sorted(got, key=lambda e: feed.index(e)) == feed  # the same bodies as the feed, once each


async def test_a_hanging_partner_does_not_hold_up_another(world: World) -> None:
    """``stuck`` never answers until released (its timeout is long, so nothing frees its lanes):
    ``steady``'s webhooks are delivered while ``stuck``'s first requests still hang."""
    gate = asyncio.Event()
    stuck, steady = Receiver("stuck secret", gate=gate), Receiver(whsec())
    for receiver in (stuck, steady):
        await receiver.start()
    settings = world.settings.model_copy(update={
        "partners_file": partners_file(world.tmp / "hanging.json", {"stuck": stuck, "steady": steady}),
        "webhook_timeout_s": 120.0, "webhook_concurrency_per_partner": 2})

    async def record(partner: str, count: int) -> None:
        async with world.deps.pool.acquire() as conn:
            for _ in range(count):
                async with conn.transaction():
                    await PartnerEventRepository(conn).add_event(partner, partner_events.stamping_completed(
                        order_id=uuid.uuid4(), stamping_id=uuid.uuid4(), sn=f"SN-{uuid.uuid4().hex[:12]}",
                        document_sha256="cd" * 32, stamped_at=datetime.now(UTC), at=datetime.now(UTC)),
                        deliver=True)

    try:
        async with dispatching(settings, world.deps.pool):
            await record("stuck", 5)
            await eventually(lambda: stuck.in_flight == 2, message="stuck's lanes to fill")
            await record("steady", 3)
            await world.delivered("steady", 3)
            assert (stuck.in_flight, stuck.answered, len(stuck.received)) == (2, 0, 2)
            assert [r["attempts"] for r in await world.deliveries("stuck")] == [0] * 5

            gate.set()
            rows = await world.delivered("stuck", 5)
            assert [r["attempts"] for r in rows] == [1] * 5
            assert stuck.most_in_flight == 2  # the per-partner cap
            assert len(stuck.events()) == 5 and len(steady.events()) == 3
    finally:
        for receiver in (stuck, steady):
            await receiver.stop()


async def test_gives_up_after_the_maximum_age_and_resend_delivers(world: World) -> None:
    gone = world.receivers["gone"]
    await world.fulfilled("gone")

    async def tried() -> list[Any] | None:
        rows = await world.deliveries("gone")
        return rows if rows and rows[0]["attempts"] >= 1 else None

    [row] = await eventually(tried, message="a first failed attempt")
    # Three days pass: the delivery's age reaches webhook_max_age_s.
    await world.val("UPDATE webhook_deliveries SET created_at = created_at - make_interval(secs => $2)"
                    " WHERE id = $1", row["id"], world.settings.webhook_max_age_s)

    async def failed() -> bool:
        return bool(await world.val("SELECT status FROM webhook_deliveries WHERE id = $1", row["id"]) == "FAILED")

    await eventually(failed, message="the delivery to be given up")
    code, listed = await world.cli("list", "--partner", "gone", "--status", "FAILED")
    assert code == 0
    [entry] = listed
    assert (entry["id"], entry["status"], entry["type"]) == (row["id"], "FAILED", "order.fulfilled")
    assert entry["attempts"] >= 2 and entry["last_status"] is None and entry["last_error"]
    assert gone.received == []

    await gone.start()
    assert await world.cli("resend", "--id", str(row["id"])) == (0, [{"resent": [row["id"]], "unknown": []}])
    await world.delivered("gone", 1)
    code, log = await world.cli("attempts", "--id", str(row["id"]))
    assert code == 0 and log[-1]["status_code"] == 200 and all(a["error"] for a in log[:-1])
    assert [a["attempt"] for a in log] == list(range(1, len(log) + 1))
    assert gone.events() == (await world.feed("gone"))["events"]
    assert await world.cli("resend", "--id", "987654321") == (1, [{"resent": [], "unknown": [987654321]}])
