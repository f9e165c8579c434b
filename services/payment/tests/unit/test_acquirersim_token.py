"""The acquirer simulator keeps the merchant's access token for its notifies, as an acquirer does:
one token request per ``expiresIn``, a fresh one when the merchant no longer knows it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from emeterai_testkit.fixtures import free_port
from payment_service.adapters.acquirersim import INVALID_TOKEN, AcquirerSimulator, new_acquirer_entry
from payment_service.adapters.snap import QR_NOTIFY_PATH, TOKEN_PATH


@dataclass
class Merchant:
    """Just the two merchant endpoints a notify uses: tokens it hands out, notifies it takes."""

    expires_in: str = "900"
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    notifies: list[str] = field(default_factory=list)

    async def token(self, _request: web.Request) -> web.Response:
        self.token_requests += 1
        token = secrets.token_urlsafe(12)
        self.tokens.add(token)
        return web.json_response({"responseCode": "2007300", "accessToken": token, "tokenType": "Bearer",
                                  "expiresIn": self.expires_in})

    async def notify(self, request: web.Request) -> web.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        if token not in self.tokens:
            return web.json_response({"responseCode": INVALID_TOKEN}, status=401)
        self.notifies.append(token)
        return web.json_response({"responseCode": "2005200"})


@pytest.fixture
async def merchant() -> AsyncIterator[tuple[Merchant, str]]:
    m = Merchant()
    app = web.Application()
    app.router.add_post(TOKEN_PATH, m.token)
    app.router.add_post(QR_NOTIFY_PATH, m.notify)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield m, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def simulator(url: str) -> AcquirerSimulator:
    entry, private_pem = new_acquirer_entry("http://127.0.0.1:1")
    return AcquirerSimulator(entry, private_pem, url)


async def test_one_token_for_many_notifies(merchant: tuple[Merchant, str]) -> None:
    m, url = merchant
    sim = simulator(url)
    answers = [await sim.notify(f"EM{n}") for n in range(3)]
    assert [status for status, _ in answers] == [200, 200, 200]
    assert m.token_requests == 1
    assert len(set(m.notifies)) == 1


async def test_a_forgotten_token_is_replaced_once(merchant: tuple[Merchant, str]) -> None:
    m, url = merchant
    sim = simulator(url)
    assert (await sim.notify("EM1"))[0] == 200
    m.tokens.clear()  # the merchant restarted on a fresh database
    status, body = await sim.notify("EM2")
    assert (status, body["responseCode"]) == (200, "2005200")
    assert m.token_requests == 2


async def test_a_token_near_its_expiry_is_not_used(merchant: tuple[Merchant, str]) -> None:
    m, url = merchant
    m.expires_in = "30"  # within the margin: never kept
    sim = simulator(url)
    for n in range(2):
        assert (await sim.notify(f"EM{n}"))[0] == 200
    assert m.token_requests == 2
    assert len(set(m.notifies)) == 2
