"""The browser's one origin: nginx (as ``make run`` starts it, ``compose/ingress``'s rules) in front
of the four real apis. The page is served with its caching and security headers, every API path
reaches its service, a service that is down is an honest 503 with Retry-After, and each client
keeps its own address behind the proxy, so per-client limits stay per client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.platform import Platform, ingress


@pytest.fixture(scope="module")
async def origin(purchase_platform: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Platform, str]]:
    # minting's registry look-ups are limited per client: 2 at once, then (practically) none
    limits = {"trusted_proxies": "127.0.0.1", "registry_burst": 2, "registry_rate_per_s": 0.001}
    async with purchase_platform(stock=10, stamping=True, minting_overrides=limits) as p, \
            ingress(p, tmp_path_factory.mktemp("ingress")) as url:
        yield p, url


async def test_the_page_is_small_cached_by_revalidation_and_locked_down(origin: tuple[Platform, str]) -> None:
    _, url = origin
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert r.headers["Cache-Control"] == "no-cache"
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with session.get(url + "/riwayat") as r:  # the page's own paths: the same small HTML
            assert r.status == 200 and r.content_type == "text/html"
        async with session.get(url + "/assets/no-such-file.js") as r:
            assert r.status == 404


async def test_every_api_reaches_its_service_through_the_one_origin(origin: tuple[Platform, str]) -> None:
    _, url = origin
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, url)  # the order api, through the ingress
        await buyer.register()
        order_id = await buyer.order(1)
        assert (await buyer.get(order_id))["order_id"] == order_id
        async with session.get(url + "/v1/quota", headers=buyer.auth) as r:  # stamping
            assert r.status == 200 and (await r.json())["available"] == 0
        form = aiohttp.FormData()
        form.add_field("file", b"not a pdf", filename="letter.pdf", content_type="application/pdf")
        async with session.post(url + "/v1/verify", data=form) as r:  # stamping, public
            assert 400 <= r.status < 500 and "error" in await r.json()
        async with session.get(url + "/v1/keys") as r:  # minting
            assert r.status == 200 and "keys" in await r.json()
        async with session.post(url + "/snap/v1.0/access-token/b2b", json={"grantType": "client_credentials"}) as r:
            body = await r.json()  # payment: an unsigned token request gets SNAP's answer, not nginx's
            assert r.status in (400, 401) and body["responseCode"].startswith(str(r.status))
        async with session.post(url + "/v1/orders", json={"quantity": 1}) as r:  # the services' own errors pass through
            assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"


async def test_each_client_keeps_its_own_address_behind_the_proxy(origin: tuple[Platform, str]) -> None:
    _, url = origin
    async with aiohttp.ClientSession() as session:
        async def lookup(client: str) -> int:
            async with session.get(url + "/v1/stamps/NOSUCHSERIAL", headers={"X-Forwarded-For": client}) as r:
                return r.status

        first = [await lookup("198.51.100.1") for _ in range(3)]
        assert first[:2] == [404, 404] and first[2] == 429, first
        # another client behind the same proxy has its own limit
        assert await lookup("198.51.100.2") == 404


async def test_a_service_that_is_down_is_an_honest_503(origin: tuple[Platform, str]) -> None:
    p, url = origin
    p.proc("minting", "api").kill()
    try:
        async with aiohttp.ClientSession() as session, session.get(url + "/v1/keys") as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
            assert (await r.json())["error"]["code"] == "unavailable"
    finally:
        await p.start(("minting", "api"))
