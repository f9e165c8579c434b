"""Clients keep their own address behind a trusted proxy, and only behind one."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from emeterai_shared.forwarded import TrustedProxies
from emeterai_shared.http import create_app

PROXY = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8, ::1")


@pytest.mark.parametrize(("peer", "headers", "client"), [
    ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # not from a proxy: the header is the client's own words
    ("127.0.0.1", [], "127.0.0.1"),  # from the proxy, no header: the proxy itself
    ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
    ("127.0.0.1", ["1.2.3.4, 198.51.100.1"], "198.51.100.1"),  # a forged left part is skipped
    ("127.0.0.1", ["1.2.3.4, 198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # two proxies in a row
    ("127.0.0.1", ["1.2.3.4", "198.51.100.1"], "198.51.100.1"),  # several headers are one list
    ("127.0.0.1", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),  # all trusted: the leftmost
    ("127.0.0.1", ["garbage, 10.0.0.6"], "10.0.0.6"),  # garbage stops at the proxy that passed it on
    ("127.0.0.1", ["198.51.100.1:4711"], "198.51.100.1"),
    ("127.0.0.1", ["[2001:db8::1]:4711"], "2001:db8::1"),
    ("::1", ["2001:db8::2"], "2001:db8::2"),
])
def test_the_client_is_the_first_untrusted_hop_from_the_right(peer: str, headers: list[str], client: str) -> None:
    assert PROXY.client(peer, headers) == client


def test_nobody_is_trusted_by_default() -> None:
    assert not TrustedProxies.parse("")
    assert TrustedProxies.parse("").client("127.0.0.1", ["198.51.100.1"]) == "127.0.0.1"


def test_a_bad_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="trusted proxies"):
        TrustedProxies.parse("127.0.0.1, not-an-address")


async def _remote(client: TestClient, **headers: str) -> str:
    response = await client.get("/whoami", headers=headers)
    assert response.status == 200
    return await response.text()


async def _serve(trusted: TrustedProxies | None) -> TestClient:
    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=request.remote or "")

    app = create_app("forwarded-test", max_body_bytes=1024, trusted_proxies=trusted)
    app.router.add_get("/whoami", whoami)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def test_handlers_see_the_forwarded_client_behind_a_trusted_proxy() -> None:
    client = await _serve(TrustedProxies.parse("127.0.0.1"))
    try:
        assert await _remote(client) == "127.0.0.1"
        assert await _remote(client, **{"X-Forwarded-For": "1.2.3.4, 198.51.100.7"}) == "198.51.100.7"
    finally:
        await client.close()


async def test_without_trusted_proxies_the_header_changes_nothing() -> None:
    client = await _serve(None)
    try:
        assert await _remote(client, **{"X-Forwarded-For": "198.51.100.7"}) == "127.0.0.1"
    finally:
        await client.close()
