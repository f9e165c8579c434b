"""The notification adapter against real HTTP servers and a real file: the gateway's retries with
backoff on 5xx and timeouts, a refusal for good, and the development sink's whole lines; and the
worker's text dispatcher against the real PostgreSQL (``sms_outbox``) and such a gateway: a batch
sent together, expired and refused texts, the in-flight cap, and a lease that runs out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from emeterai_shared.db import create_pool
from emeterai_testkit.fixtures import reset_service, settings_for
from order_service.adapters.sms import DevSmsSink, HttpSmsGateway, SmsFailed
from order_service.adapters.texts import TextOutbox
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings
from order_service.service_layer.text_dispatcher import MAX_LEASES, TextDispatcher

Answer = Callable[[int], int]
"""The status the gateway answers its n-th request with (599: no answer within the client's timeout)."""


class Gateway:
    """A stand-in SMS gateway: a real HTTP server recording what it received."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.received: list[dict[str, object]] = []
        self.gate: asyncio.Event | None = None
        """When set, every request waits for this event before it is answered."""
        app = web.Application()
        app.router.add_post("/send", self._handle)
        self.server = TestServer(app)

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append({"body": await request.json(), "auth": request.headers.get("Authorization")})
        status = self.answer(len(self.received))
        if self.gate is not None:
            await self.gate.wait()
        if status == 599:
            await asyncio.sleep(5)
            status = 200
        return web.Response(status=status, text="answer")

    def client(self, attempts: int = 4, timeout_s: float = 10.0) -> HttpSmsGateway:
        return HttpSmsGateway(str(self.server.make_url("/send")), "secret-token", timeout_s=timeout_s,
                              attempts=attempts, backoff_initial_s=0.01, backoff_max_s=0.05)


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[[Answer], Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def start(answer: Answer) -> Gateway:
        fake = Gateway(answer)
        await fake.server.start_server()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.server.close()


Start = Callable[[Answer], Awaitable[Gateway]]


async def test_gateway_retries_server_errors_and_timeouts(gateway: Start) -> None:
    fake = await gateway(lambda n: 503 if n == 1 else (599 if n == 2 else 200))
    sms = fake.client(timeout_s=0.5)
    try:
        await sms.send("+6281234567890", "Kode masuk e-meterai Anda: 123456.")
    finally:
        await sms.close()
    received = fake.received
    assert len(received) == 3
    assert received[-1] == {"body": {"to": "+6281234567890", "text": "Kode masuk e-meterai Anda: 123456."},
                            "auth": "Bearer secret-token"}


async def test_gateway_failing_for_good_raises(gateway: Start) -> None:
    fake = await gateway(lambda n: 500)
    sms = fake.client(attempts=3)
    try:
        with pytest.raises(SmsFailed, match="3 attempt"):
            await sms.send("+6281234567890", "x")
    finally:
        await sms.close()
    assert len(fake.received) == 3


async def test_gateway_refusal_is_not_retried(gateway: Start) -> None:
    fake = await gateway(lambda n: 400)
    sms = fake.client()
    try:
        with pytest.raises(SmsFailed, match="400"):
            await sms.send("+6281234567890", "x")
    finally:
        await sms.close()
    assert len(fake.received) == 1


async def test_dev_sink_appends_whole_lines(tmp_path: Path) -> None:
    sink = DevSmsSink(tmp_path / "dev-sms.jsonl")
    texts = [f"Kode {i:06d} " + "x" * 5000 for i in range(50)]
    await asyncio.gather(*(sink.send(f"+62812{i:07d}", text) for i, text in enumerate(texts)))
    lines = (tmp_path / "dev-sms.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["text"] for r in records) == sorted(texts)
    assert all(set(r) == {"phone", "text", "sent_at"} for r in records)


async def test_dev_sink_writes_a_batch_in_one_go(tmp_path: Path) -> None:
    sink = DevSmsSink(tmp_path / "dev-sms.jsonl")
    assert await sink.send_all([("+6281200000001", "a"), ("+6281200000002", "b")]) == [None, None]
    records = [json.loads(line) for line in (tmp_path / "dev-sms.jsonl").read_text().splitlines()]
    assert [(r["phone"], r["text"]) for r in records] == [("+6281200000001", "a"), ("+6281200000002", "b")]


@pytest.fixture
async def texts_db(servers: str, tmp_path: Path) -> AsyncIterator[tuple[OrderSettings, asyncpg.Pool]]:
    settings = settings_for(OrderSettings, secrets_dir=str(tmp_path / "secrets"), sms_concurrency=3)
    assert isinstance(settings, OrderSettings)
    await reset_service(SERVICE, settings)
    pool = await create_pool(settings.database_url, max_size=4)
    try:
        yield settings, pool
    finally:
        await pool.close()


async def queue_text(pool: asyncpg.Pool, phone: str, body: str, expires_in_s: float = 300.0) -> int:
    text_id: int = await pool.fetchval(
        "INSERT INTO sms_outbox (phone, body, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))"
        " RETURNING id", phone, body, expires_in_s)
    return text_id


async def run_dispatcher(dispatcher: TextDispatcher) -> None:
    await dispatcher.tick()
    await dispatcher.settle()


async def test_dispatcher_sends_due_texts_up_to_its_cap_and_deletes_them(
        texts_db: tuple[OrderSettings, asyncpg.Pool], gateway: Start) -> None:
    settings, pool = texts_db
    fake = await gateway(lambda n: 200)
    fake.gate = asyncio.Event()
    sms = fake.client()
    dispatcher = TextDispatcher(pool, sms, settings)
    try:
        for i in range(5):
            await queue_text(pool, f"+628130000000{i}", f"Kode 00000{i}")
        await dispatcher.tick()
        assert dispatcher.in_flight == 3  # sms_concurrency: the other two stay due
        await dispatcher.tick()  # no room: nothing more is claimed
        assert dispatcher.in_flight == 3
        assert await pool.fetchval("SELECT count(*) FROM sms_outbox WHERE due_at <= now()") == 2
        fake.gate.set()
        await dispatcher.settle()
        assert dispatcher.in_flight == 0
        await run_dispatcher(dispatcher)
    finally:
        await dispatcher.close()
        await sms.close()
    assert sorted(str(r["body"]) for r in fake.received) == sorted(
        str({"to": f"+628130000000{i}", "text": f"Kode 00000{i}"}) for i in range(5))
    assert await pool.fetchval("SELECT count(*) FROM sms_outbox") == 0


async def test_dispatcher_drops_expired_texts_and_keeps_refused_ones_without_their_text(
        texts_db: tuple[OrderSettings, asyncpg.Pool], gateway: Start) -> None:
    settings, pool = texts_db
    fake = await gateway(lambda n: 400)  # the gateway refuses the text: no retry, kept as failed
    sms = fake.client()
    dispatcher = TextDispatcher(pool, sms, settings)
    try:
        await queue_text(pool, "+6281300000010", "Kode 111111", expires_in_s=-1)
        refused = await queue_text(pool, "+6281300000011", "Kode 222222")
        await run_dispatcher(dispatcher)
        await run_dispatcher(dispatcher)  # a failed text is never tried again
    finally:
        await dispatcher.close()
        await sms.close()
    assert [r["body"]["to"] for r in fake.received] == ["+6281300000011"]  # type: ignore[index]
    rows = await pool.fetch("SELECT id, body, failed_at, last_error FROM sms_outbox")
    assert [(r["id"], r["body"], r["failed_at"] is not None) for r in rows] == [(refused, "", True)]
    assert "400" in rows[0]["last_error"]


async def test_a_lease_that_runs_out_sends_again_and_a_text_leased_too_often_fails(
        texts_db: tuple[OrderSettings, asyncpg.Pool], gateway: Start) -> None:
    """A worker that dies between the claim and the finish leaves its texts leased: they are sent
    once the lease runs out; a text whose leases keep running out fails without a send."""
    settings, pool = texts_db
    fake = await gateway(lambda n: 200)
    sms = fake.client()
    dispatcher = TextDispatcher(pool, sms, settings)
    try:
        orphan = await queue_text(pool, "+6281300000020", "Kode 333333")
        poison = await queue_text(pool, "+6281300000021", "Kode 444444")
        [claimed, _] = await TextOutbox(pool).claim(10, 3600)  # a worker that died after its claim
        assert claimed.id == orphan
        await run_dispatcher(dispatcher)
        assert fake.received == []  # leased: not due
        await pool.execute("UPDATE sms_outbox SET due_at = now() WHERE id = $1", orphan)  # the lease ran out
        await pool.execute("UPDATE sms_outbox SET due_at = now(), attempts = $2 WHERE id = $1", poison, MAX_LEASES)
        await run_dispatcher(dispatcher)
    finally:
        await dispatcher.close()
        await sms.close()
    assert [r["body"]["to"] for r in fake.received] == ["+6281300000020"]  # type: ignore[index]
    rows = await pool.fetch("SELECT id, failed_at, last_error FROM sms_outbox")
    assert [(r["id"], r["failed_at"] is not None) for r in rows] == [(poison, True)]
    assert "without an outcome" in rows[0]["last_error"]
