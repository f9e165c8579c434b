"""Phone sign-in in-process (aiohttp TestServer) against the real PostgreSQL: what ``sms_outbox``
holds (a text with the code, never the code in the database), the per-address limit shared
through the database, codes that work once, and the hot path's check for tokens without a session.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from emeterai_shared.db import create_pool
from emeterai_testkit.fixtures import reset_service, settings_for
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings
from order_service.dependencies import OrderDeps

Client = TestClient[web.Request, web.Application]
ServeApi = Callable[[OrderSettings, asyncpg.Pool], AbstractAsyncContextManager[tuple[Client, OrderDeps]]]
CLIENT_LIMIT = 4


@pytest.fixture(scope="module")
async def api(servers: str, tmp_path_factory: pytest.TempPathFactory,
              serve_order_api: ServeApi) -> AsyncIterator[tuple[Client, asyncpg.Pool]]:
    tmp = tmp_path_factory.mktemp("signin-api")
    settings = settings_for(OrderSettings, secrets_dir=str(tmp / "secrets"), otp_client_limit=CLIENT_LIMIT,
                            otp_phone_interval_s=0)
    assert isinstance(settings, OrderSettings)
    await reset_service(SERVICE, settings)
    pool = await create_pool(settings.database_url, max_size=4)
    try:
        async with serve_order_api(settings, pool) as (client, _):
            yield client, pool
    finally:
        await pool.close()


async def texts(pool: asyncpg.Pool, phone: str) -> list[str]:
    """The texts queued for ``phone`` in ``sms_outbox`` (the worker's text dispatcher sends them)."""
    return [r["body"] for r in await pool.fetch("SELECT body FROM sms_outbox WHERE phone = $1 ORDER BY id", phone)]


async def test_a_code_goes_out_through_the_text_outbox_and_works_once(api: tuple[Client, asyncpg.Pool]) -> None:
    client, pool = api
    phone = "+6281300000001"
    resp = await client.post("/v1/auth/otp", json={"phone": "081300000001"})  # national form: the same phone
    assert (resp.status, await resp.json()) == (202, {"expires_in_s": 300})
    [text] = await texts(pool, phone)
    [code] = re.findall(r"[0-9]{6}", text)
    digest = await pool.fetchval("SELECT digest FROM otp_codes WHERE phone = $1", phone)
    assert code.encode() not in bytes(digest) and len(digest) == 32

    resp = await client.post("/v1/auth/token", json={"phone": phone, "code": code})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"account_id", "token", "refresh_token", "expires_in_s"}
    assert resp.headers["Cache-Control"] == "no-store"
    assert await pool.fetchval("SELECT phone_verified_at IS NOT NULL FROM accounts WHERE id = $1",
                               uuid.UUID(body["account_id"]))
    # a new account announces nothing (no token without a session can exist for it)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE message_type = 'order.account_verified.v1'") == 0
    again = await client.post("/v1/auth/token", json={"phone": phone, "code": code})
    assert (again.status, (await again.json())["error"]["code"]) == (401, "invalid_code")

    # the token works for orders; logout ends the session
    token = body["token"]
    order = await client.post("/v1/orders", json={"quantity": 1},
                              headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())})
    assert order.status == 202, await order.text()
    out = await client.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert out.status == 204
    assert await pool.fetchval("SELECT revoked_at IS NOT NULL FROM sessions WHERE account_id = $1",
                               uuid.UUID(body["account_id"]))


async def test_registered_account_is_verified_and_its_old_tokens_superseded(api: tuple[Client, asyncpg.Pool]) -> None:
    client, pool = api
    phone = "+6281300000002"
    registered = await (await client.post("/v1/accounts", json={"name": "Siti", "phone": phone})).json()
    await client.post("/v1/accounts", json={"name": "Orang lain", "phone": phone})  # a younger one
    await client.post("/v1/auth/otp", json={"phone": phone})
    [code] = re.findall(r"[0-9]{6}", (await texts(pool, phone))[-1])
    signed_in = await (await client.post("/v1/auth/token", json={"phone": phone, "code": code})).json()
    assert signed_in["account_id"] == registered["account_id"]  # the oldest
    announced = await pool.fetchval("SELECT convert_from(body, 'UTF8')::jsonb->>'account_id' FROM outbox"
                                    " WHERE message_type = 'order.account_verified.v1'")
    assert announced == registered["account_id"]
    old = await client.post("/v1/orders", json={"quantity": 1}, headers={
        "Authorization": f"Bearer {registered['token']}", "Idempotency-Key": str(uuid.uuid4())})
    assert (old.status, (await old.json())["error"]["code"]) == (401, "token_superseded")


async def test_code_requests_per_address_are_limited_across_phones(api: tuple[Client, asyncpg.Pool]) -> None:
    client, _ = api
    statuses: list[int] = []
    answer: Any = None
    for i in range(2 * CLIENT_LIMIT + 1):  # fixed windows: a 429 is certain within twice the limit plus one
        resp = await client.post("/v1/auth/otp", json={"phone": f"+62813999{i:05d}"})
        statuses.append(resp.status)
        if resp.status == 429:
            answer = (await resp.json(), resp.headers)
            break
    assert answer is not None, statuses
    body, headers = answer
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 600
    assert body["error"]["retry_after_s"] == int(headers["Retry-After"])


async def test_malformed_sign_in_bodies_are_refused(api: tuple[Client, asyncpg.Pool]) -> None:
    client, _ = api
    for path, body in (("/v1/auth/otp", {"phone": "not a phone"}), ("/v1/auth/token", {"phone": "+6281300000003"}),
                       ("/v1/auth/token", {"phone": "+6281300000003", "code": "12345a"}),
                       ("/v1/auth/refresh", {"refresh_token": ""})):
        resp = await client.post(path, json=body)
        assert (resp.status, (await resp.json())["error"]["code"]) == (422, "invalid_request"), path
    resp = await client.post("/v1/auth/otp", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": "never-issued"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (401, "invalid_refresh_token")
    resp = await client.post("/v1/auth/logout")
    assert resp.status == 401


async def test_housekeeping_forgets_what_is_past_use_and_keeps_the_rest(api: tuple[Client, asyncpg.Pool]) -> None:
    """The worker's periodic job: limit windows, codes and refresh tokens older than the keep time
    go, current ones stay (run against the real schema: its SQL must type-check in PostgreSQL)."""
    from datetime import UTC, datetime, timedelta

    from emeterai_shared.uow import unit_of_work
    from order_service.service_layer import signin

    _, pool = api
    now = datetime.now(UTC)
    old, fresh = now - timedelta(days=2), now
    account, sid = uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO auth_limits (key, window_start, hits) VALUES ('hk-old', $1, 1), ('hk-new', $2, 1)",
                       old, fresh)
    await pool.execute("INSERT INTO otp_codes (phone, digest, expires_at) VALUES ('+62899000001', $3, $1),"
                       " ('+62899000002', $3, $2)", old, fresh + timedelta(minutes=5), b"\x00")
    await pool.execute("INSERT INTO accounts (id, name, phone) VALUES ($1, 'Housekeeping', '+62899000009')", account)
    await pool.execute("INSERT INTO sessions (sid, account_id) VALUES ($1, $2)", sid, account)
    await pool.execute("INSERT INTO refresh_tokens (digest, sid, account_id, expires_at) VALUES"
                       " ($5, $1, $2, $3), ($6, $1, $2, $4)", sid, account, old, fresh + timedelta(days=1),
                       uuid.uuid4().bytes, uuid.uuid4().bytes)
    async with unit_of_work(pool) as uow:
        await signin.housekeeping(uow)
    assert await pool.fetchval("SELECT array_agg(key ORDER BY key) FROM auth_limits WHERE key LIKE 'hk-%'") == [
        "hk-new"]
    assert await pool.fetchval("SELECT array_agg(phone) FROM otp_codes WHERE phone LIKE '+628990000%'") == [
        "+62899000002"]
    assert await pool.fetchval("SELECT count(*) FROM refresh_tokens WHERE sid = $1", sid) == 1
