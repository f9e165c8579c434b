"""Applicants keep their account: phone sign-in through real processes of all four services.

* A buyer registered with ``POST /v1/accounts`` buys stamps, finds an expired token of the account
  refused, signs in with the code the platform wrote to the development sink: the same account,
  order and quota; the refresh token rotates, a reused one revokes the account's sessions, logout
  ends the session.
* Someone else registered the owner's phone first: once the owner signs in, the squatter's token
  is refused (401 ``token_superseded``) at the order service and at the stamping service.
* 100 concurrent sign-ins for 100 phones all succeed; 6 wrong codes void the pending code; code
  requests past the per-phone limit get 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from emeterai_shared.auth import TokenIssuer
from emeterai_testkit.clients import Buyer, SmsInbox
from emeterai_testkit.fixtures import eventually, fetchval
from emeterai_testkit.platform import Platform

LEGACY_TOKEN_TTL_S = 600
"""Tokens of POST /v1/accounts live long enough here for any machine; an expired one is signed with
the platform's own key (`expired_token_of`) rather than waited out."""
PHONE_CODES_PER_HOUR = 3
_phones = itertools.count(1)


def new_phone() -> str:
    return f"+62813{uuid.uuid4().int % 10**5:05d}{next(_phones):03d}"


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any) -> AsyncIterator[Platform]:
    order = {"token_ttl_s": LEGACY_TOKEN_TTL_S, "access_token_ttl_s": 300, "otp_phone_interval_s": 0,
             "otp_phone_per_hour": PHONE_CODES_PER_HOUR, "otp_client_limit": 1000}
    async with purchase_platform(stock=20, stamping=True, order_overrides=order,
                                 stamping_overrides={"pdf_workers": 1}) as p:
        yield p


def expired_token_of(platform: Platform, account_id: str) -> str:
    """A buyer token of ``account_id`` that expired a minute ago, signed with the order service's key."""
    key = Path(platform.settings["order"].private_key_path).read_bytes()  # type: ignore[attr-defined]
    issuer = TokenIssuer(key, timedelta(seconds=LEGACY_TOKEN_TTL_S))
    return issuer.issue(uuid.UUID(account_id), ttl=timedelta(seconds=-60))


@pytest.fixture
def inbox(platform: Platform) -> SmsInbox:
    return SmsInbox(platform.settings["order"].dev_sms_file)  # type: ignore[attr-defined]


async def call(session: aiohttp.ClientSession, method: str, url: str, *, token: str = "",
               json: Any = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method == "POST" and url.endswith("/v1/orders"):
        headers["Idempotency-Key"] = str(uuid.uuid4())
    async with session.request(method, url, json=json, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, body, dict(r.headers)


def error_code(body: dict[str, Any]) -> str:
    return str(body.get("error", {}).get("code"))


async def refused_with(session: aiohttp.ClientSession, method: str, url: str, token: str, code: str,
                       json: Any = None) -> None:
    status, body, _ = await call(session, method, url, token=token, json=json)
    assert (status, error_code(body)) == (401, code), (status, body)


async def fulfilled_without_token(platform: Platform, session: aiohttp.ClientSession, order_id: str) -> list[str]:
    """Pay the order at the bank and wait for its serials, reading the order's state in its
    database: the buyer's token may expire meanwhile."""
    order_db, oid = platform.settings["order"], uuid.UUID(order_id)

    async def billed() -> tuple[str, int] | None:
        va = await fetchval(order_db, "SELECT virtual_account_no FROM orders WHERE id = $1", oid)
        return (va, await fetchval(order_db, "SELECT bill_amount FROM orders WHERE id = $1", oid)) if va else None

    va, amount = await eventually(billed, timeout_s=90, interval_s=0.2, message=f"bill of {order_id}")
    _, answer = await platform.simulator(session).pay(platform.customer_no(va), amount)
    assert answer["responseCode"] == "2002500", answer

    async def serials() -> list[str] | None:
        status = await fetchval(order_db, "SELECT status FROM orders WHERE id = $1", oid)
        return list(await fetchval(order_db, "SELECT serials FROM orders WHERE id = $1", oid)) \
            if status == "FULFILLED" else None

    found: list[str] = await eventually(serials, timeout_s=120, interval_s=0.3, message=f"{order_id} FULFILLED")
    return found


async def test_registered_buyer_signs_back_in_with_a_code(platform: Platform, inbox: SmsInbox) -> None:
    order_url, stamping_url = platform.url("order"), platform.url("stamping")
    phone = new_phone()
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, order_url)
        await buyer.register(phone=phone)
        account_id, old_token = buyer.account_id, buyer.token
        order_id = await buyer.order(1)
        serials = await fulfilled_without_token(platform, session, order_id)
        assert len(serials) == 1

        status, _, _ = await call(session, "GET", f"{order_url}/v1/orders/{order_id}", token=old_token)
        assert status == 200
        # the same account's token past its lifetime, signed with the platform's own key: refused
        status, body, _ = await call(session, "GET", f"{order_url}/v1/orders/{order_id}",
                                     token=expired_token_of(platform, account_id))
        assert (status, error_code(body)) == (401, "token_expired"), body

        signed_in = await buyer.sign_in(phone, inbox)
        assert signed_in["account_id"] == account_id
        assert signed_in["expires_in_s"] == 300
        first_refresh = buyer.refresh_token
        order = await buyer.get(order_id)
        assert (order["status"], order["serials"]) == ("FULFILLED", serials)

        async def quota_shows() -> dict[str, Any] | None:
            status, body, _ = await call(session, "GET", f"{stamping_url}/v1/quota", token=buyer.token)
            assert status == 200, body
            return body if set(serials) <= set(body["serials_available"]) else None

        await eventually(quota_shows, timeout_s=60, interval_s=0.3, message="the bought stamp in the quota")

        # refresh rotates: a new pair, the old refresh token used up
        rotated = await buyer.refresh()
        assert rotated["account_id"] == account_id
        assert buyer.refresh_token != first_refresh
        assert (await buyer.get(order_id))["status"] == "FULFILLED"
        second_refresh = buyer.refresh_token
        # the used one presented again: every session of the account is revoked
        await refused_with(session, "POST", f"{order_url}/v1/auth/refresh", "", "refresh_token_reused",
                           json={"refresh_token": first_refresh})
        await refused_with(session, "POST", f"{order_url}/v1/auth/refresh", "", "invalid_refresh_token",
                           json={"refresh_token": second_refresh})

        # a new sign-in, then logout: the session's refresh token stops working
        await buyer.sign_in(phone, inbox)
        assert buyer.account_id == account_id
        status, _, _ = await call(session, "POST", f"{order_url}/v1/auth/logout", token=buyer.token)
        assert status == 204
        await refused_with(session, "POST", f"{order_url}/v1/auth/refresh", "", "invalid_refresh_token",
                           json={"refresh_token": buyer.refresh_token})
    # the codes were stored only as digests, and each was used once
    order_db = platform.settings["order"]
    assert await fetchval(order_db, "SELECT count(*) FROM otp_codes WHERE phone = $1", phone) == 0
    assert await fetchval(order_db, "SELECT count(*) FROM sessions WHERE account_id = $1",
                          uuid.UUID(account_id)) == 2


async def test_squatter_loses_the_phone_once_its_owner_signs_in(platform: Platform, inbox: SmsInbox) -> None:
    order_url, stamping_url = platform.url("order"), platform.url("stamping")
    phone = new_phone()
    async with aiohttp.ClientSession() as session:
        squatter = Buyer(session, order_url)
        await squatter.register(name="Penyerobot", phone=phone)
        squatter_order = await squatter.order(1)
        status, _, _ = await call(session, "GET", f"{stamping_url}/v1/quota", token=squatter.token)
        assert status == 200

        owner = Buyer(session, order_url)
        await owner.sign_in(phone, inbox)
        # several accounts of one phone: sign-in takes the oldest (documented); its phone is now verified
        assert owner.account_id == squatter.account_id

        await refused_with(session, "GET", f"{order_url}/v1/orders/{squatter_order}", squatter.token,
                           "token_superseded")
        await refused_with(session, "POST", f"{order_url}/v1/orders", squatter.token, "token_superseded",
                           json={"quantity": 1})

        async def stamping_refuses() -> bool:
            status, body, _ = await call(session, "GET", f"{stamping_url}/v1/quota", token=squatter.token)
            assert status in (200, 401), body
            return status == 401 and error_code(body) == "token_superseded"

        await eventually(stamping_refuses, timeout_s=30, interval_s=0.2,
                         message="the stamping service refusing the squatter's token")

        # the owner's tokens work everywhere
        status, _, _ = await call(session, "GET", f"{stamping_url}/v1/quota", token=owner.token)
        assert status == 200
        owner_order = await owner.order(1)
        assert (await owner.get(owner_order))["status"] in ("AWAITING_PAYMENT", "BILLED", "PAID")

        # registering the phone again afterwards gives a new, empty account: nothing of the owner's
        late = Buyer(session, order_url)
        await late.register(name="Penyerobot lagi", phone=phone)
        assert late.account_id != owner.account_id
        status, body, _ = await call(session, "GET", f"{order_url}/v1/orders/{owner_order}", token=late.token)
        assert (status, error_code(body)) == (404, "order_not_found")
        owner_again = Buyer(session, order_url)
        await owner_again.sign_in(phone, inbox)
        assert owner_again.account_id == owner.account_id


async def test_a_hundred_concurrent_sign_ins(platform: Platform, inbox: SmsInbox) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        buyers = [Buyer(session, platform.url("order"), timeout_s=240) for _ in range(100)]
        phones = [new_phone() for _ in buyers]
        answers = await asyncio.gather(*(b.sign_in(p, inbox) for b, p in zip(buyers, phones, strict=True)))
        assert len({a["account_id"] for a in answers}) == 100
        statuses = await asyncio.gather(*(call(session, "GET", f"{platform.url('stamping')}/v1/quota", token=b.token)
                                          for b in buyers[:10]))
        assert [s for s, _, _ in statuses] == [200] * 10


async def test_wrong_codes_void_the_code_and_requests_are_limited(platform: Platform, inbox: SmsInbox) -> None:
    order_url = platform.url("order")
    phone = new_phone()
    async with aiohttp.ClientSession() as session:
        since = datetime.now(UTC)
        status, body, _ = await call(session, "POST", f"{order_url}/v1/auth/otp", json={"phone": phone})
        assert (status, body) == (202, {"expires_in_s": 300})
        code = await inbox.code(phone, since)
        for i in range(1, 7):  # six wrong codes
            wrong = f"{(int(code) + i) % 10**6:06d}"
            await refused_with(session, "POST", f"{order_url}/v1/auth/token", "", "invalid_code",
                               json={"phone": phone, "code": wrong})
        # the right one no longer works: the code is void
        await refused_with(session, "POST", f"{order_url}/v1/auth/token", "", "invalid_code",
                           json={"phone": phone, "code": code})
        # malformed bodies are refused as such
        status, body, _ = await call(session, "POST", f"{order_url}/v1/auth/token", json={"phone": phone, "code": "12"})
        assert (status, error_code(body)) == (422, "invalid_request")

        # a phone gets at most PHONE_CODES_PER_HOUR codes an hour (fixed windows: within twice the
        # limit plus one, a 429 is certain even across a window's end); an unknown phone is answered alike
        limited = None
        for _ in range(2 * PHONE_CODES_PER_HOUR + 1):
            status, body, headers = await call(session, "POST", f"{order_url}/v1/auth/otp", json={"phone": phone})
            if status == 429:
                limited = (body, headers)
                break
            assert (status, body) == (202, {"expires_in_s": 300})
        assert limited is not None, "no 429 past the per-phone limit"
        body, headers = limited
        assert error_code(body) == "rate_limited"
        assert int(headers["Retry-After"]) >= 1
        assert body["error"]["retry_after_s"] == int(headers["Retry-After"])


async def test_a_browser_keeps_its_session_in_an_httponly_cookie(platform: Platform, inbox: SmsInbox) -> None:
    """The web app never holds the refresh token: the sign-in sets it as an HttpOnly, SameSite=Strict
    cookie for /v1/auth only, a refresh without a body uses (and rotates) it, logout clears it."""
    order_url = platform.url("order")
    phone = new_phone()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        buyer = Buyer(session, order_url)
        await buyer.sign_in(phone, inbox)
        [cookie] = [c for c in session.cookie_jar if c.key == "emeterai_refresh"]
        assert cookie.value == buyer.refresh_token
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/v1/auth"
        first = cookie.value

        status, body, _ = await call(session, "POST", f"{order_url}/v1/auth/refresh", json={})
        assert status == 200 and body["account_id"] == buyer.account_id, body
        [cookie] = [c for c in session.cookie_jar if c.key == "emeterai_refresh"]
        assert cookie.value == body["refresh_token"] != first  # rotated in the cookie too
        status, _, _ = await call(session, "GET", f"{order_url}/v1/orders?limit=1", token=body["token"])
        assert status == 200

        status, _, _ = await call(session, "POST", f"{order_url}/v1/auth/logout", token=body["token"])
        assert status == 204
        assert not [c for c in session.cookie_jar if c.key == "emeterai_refresh" and c.value]
        await refused_with(session, "POST", f"{order_url}/v1/auth/refresh", "", "invalid_refresh_token", json={})
