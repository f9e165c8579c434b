"""The notification adapter against real HTTP servers and a real file: the gateway's retries with
backoff on 5xx and timeouts, a refusal for good, and the development sink's whole lines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from order_service.adapters.sms import DevSmsSink, HttpSmsGateway, SmsFailed

Answer = Callable[[int], int]
"""The status the gateway answers its n-th request with (599: no answer within the client's timeout)."""


class Gateway:
    """A stand-in SMS gateway: a real HTTP server recording what it received."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.received: list[dict[str, object]] = []
        app = web.Application()
        app.router.add_post("/send", self._handle)
        self.server = TestServer(app)

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append({"body": await request.json(), "auth": request.headers.get("Authorization")})
        status = self.answer(len(self.received))
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
