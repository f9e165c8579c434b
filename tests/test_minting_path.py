"""Paid orders become stamps: order → payment → minting → FULFILLED, through real processes.

Every serial is unique and well formed, its token verifies offline with nothing but the public
key published at ``GET /v1/keys``, the registry knows it, and running out of stock ends in a
recorded refund, never in an order stuck at PAID.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.fixtures import fetchval
from emeterai_testkit.platform import Platform
from minting_service.domain.serial import is_valid
from payment_service.adapters.banksim import BankSimulator

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]
STOCK = 60


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any) -> AsyncIterator[Platform]:
    # No waiting for stock here (MINTING_STOCK_WAIT_S=0): too little stock fails the order at once.
    # Waiting for stock is tests/test_stock_wait.py.
    async with purchase_platform(stock=STOCK, minting_overrides={"stock_wait_s": 0}) as p:
        yield p


async def published_keys(session: aiohttp.ClientSession, platform: Platform) -> dict[str, Any]:
    async with session.get(f"{platform.url('minting')}/v1/keys") as r:
        assert r.status == 200
        keys = (await r.json())["keys"]
    return {k["kid"]: jwt.PyJWK(k).key for k in keys if k.get("kty") == "OKP"}


async def test_paid_orders_are_fulfilled_with_verifiable_unique_stamps(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    async with aiohttp.ClientSession() as session:
        bank = bank_client(platform, session)
        buyers = [Buyer(session, platform.url("order")) for _ in range(10)]
        await asyncio.gather(*(b.register() for b in buyers))
        orders = await asyncio.gather(*(
            b.paid_order(2, bank, platform.customer_no) for b in buyers for _ in range(2)))
        owners = [b for b in buyers for _ in range(2)]
        fulfilled = [await owner.status_becomes(o, "FULFILLED") for owner, o in zip(owners, orders, strict=True)]
        keys = await published_keys(session, platform)
        serials = [sn for order in fulfilled for sn in order["serials"]]
        assert all(len(order["serials"]) == 2 for order in fulfilled)
        assert len(serials) == len(set(serials)) == 40
        assert all(len(sn) == 22 and sn.isalnum() and sn.upper() == sn and is_valid(sn) for sn in serials)
        tokens = await tokens_of(platform, orders)
        assert sorted(tokens) == sorted(serials)
        for sn, token in tokens.items():
            kid = jwt.get_unverified_header(token)["kid"]
            claims = jwt.decode(token, keys[kid], algorithms=["EdDSA"])
            assert claims["sn"] == sn and claims["fv"] == 10_000
        for sn in serials[:5]:
            async with session.get(f"{platform.url('minting')}/v1/stamps/{sn}") as r:
                assert r.status == 200
                stamp = await r.json()
            assert (stamp["sn"], stamp["status"], stamp["face_value"]) == (sn, "UNUSED", 10_000)
    minting = platform.settings["minting"]
    for order_id in orders:
        assert await fetchval(minting, "SELECT count(*) FROM outbox WHERE message_type ="
                              " 'minting.serials_issued.v1' AND correlation_id = $1", order_id) == 1


async def tokens_of(platform: Platform, orders: list[str]) -> dict[str, str]:
    """The tokens the order service received (what partners get in their webhooks)."""
    rows = await fetchval(platform.settings["order"],
                          "SELECT json_agg(json_build_array(sn, token)) FROM order_serials"
                          " WHERE order_id = ANY($1::uuid[])", orders)
    return {sn: token for sn, token in (json.loads(rows) if isinstance(rows, str) else rows)}


async def test_out_of_stock_ends_refunded_and_later_stock_does_not_fulfil(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo, command: Callable[..., Any]
) -> None:
    left = json.loads(await command(platform, "minting", "stock", "show"))
    available = int(left["available"])
    assert available < 100, left
    async with aiohttp.ClientSession() as session:
        bank = bank_client(platform, session)
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id = await buyer.paid_order(available + 1, bank, platform.customer_no)
        order = await buyer.status_becomes(order_id, "REFUNDED")
        assert order["serials"] == []
        payment = platform.settings["payment"]
        assert await fetchval(payment, "SELECT count(*) FROM refunds WHERE order_id = $1::uuid", order_id) == 1
        await command(platform, "minting", "stock", "add", "--count", str(available + 10))
        assert (await buyer.get(order_id))["status"] == "REFUNDED"
    minting = platform.settings["minting"]
    assert await fetchval(minting, "SELECT count(*) FROM outbox WHERE message_type ="
                          " 'minting.serials_issued.v1' AND correlation_id = $1", order_id) == 0
