"""Unpaid orders expire; money that arrives after expiry is captured and refunded, never lost.

A bill expires once the buyer has seen it: the test moves its ``expires_at`` into the past in the
payment database and the sweep (every half second here) expires it. A short configured expiry would
race the platform instead (on a slow machine a bill could expire before its order even shows it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.fixtures import fetchval
from emeterai_testkit.platform import Platform
from payment_service.adapters.banksim import BankSimulator

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any) -> AsyncIterator[Platform]:
    async with purchase_platform(expiry_sweep_interval_s=0.5) as p:
        yield p


async def expire_now(platform: Platform, order_id: str) -> datetime:
    """The bill of ``order_id`` is due from now on (the sweep expires it); returns its new expiry."""
    expires_at: datetime = await fetchval(
        platform.settings["payment"],
        "UPDATE bills SET expires_at = now() - interval '1 second' WHERE order_id = $1::uuid RETURNING expires_at",
        order_id)
    return expires_at


async def test_unpaid_order_expires_and_refuses_a_late_payment(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id, bill = await buyer.billed_order(1)
        await expire_now(platform, order_id)
        await buyer.status_becomes(order_id, "EXPIRED", timeout_s=60)
        bank = bank_client(platform, session)
        status, body = await bank.pay(va_customer_no(platform, bill["virtual_account_no"]), bill["amount"])
        assert (status, body["responseCode"]) == (404, "4042519"), body
    payment_db = platform.settings["payment"]
    assert await fetchval(payment_db, "SELECT count(*) FROM outbox WHERE message_type ="
                          " 'payment.captured.v1' AND correlation_id = $1", order_id) == 0
    assert (await buyer_status(platform, order_id)) == "EXPIRED"


async def test_late_bank_advice_is_captured_and_refunded(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    """The customer paid in time, the bank reports it after expiry (flagAdvise=Y)."""
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id, bill = await buyer.billed_order(2)
        paid_at = await expire_now(platform, order_id) - timedelta(seconds=1)  # in time, by the bill's clock
        await buyer.status_becomes(order_id, "EXPIRED", timeout_s=60)
        bank = bank_client(platform, session)
        status, body = await bank.pay(va_customer_no(platform, bill["virtual_account_no"]), bill["amount"],
                                      flag_advise="Y", paid_at=paid_at)
        assert (status, body["responseCode"]) == (200, "2002500"), body
        order = await buyer.status_becomes(order_id, "REFUNDED", timeout_s=60)
        assert order["serials"] == []
    payment_db = platform.settings["payment"]
    assert await fetchval(payment_db, "SELECT count(*) FROM outbox WHERE message_type ="
                          " 'payment.refunded.v1' AND correlation_id = $1", order_id) == 1
    assert await fetchval(payment_db, "SELECT count(*) FROM refunds r JOIN bills b ON b.order_id = r.order_id"
                          " WHERE b.order_id = $1::uuid AND r.amount = $2", order_id, bill["amount"]) == 1
    order_db = platform.settings["order"]
    assert await fetchval(order_db, "SELECT count(*) FROM outbox WHERE message_type = 'order.paid.v1'"
                          " AND correlation_id = $1", order_id) == 0


async def buyer_status(platform: Platform, order_id: str) -> str:
    return str(await fetchval(platform.settings["order"], "SELECT status FROM orders WHERE id = $1::uuid",
                              order_id))
