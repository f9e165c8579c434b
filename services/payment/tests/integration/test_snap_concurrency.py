"""Concurrent payment notifications capture a bill exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

from emeterai_shared.contracts.events import PaymentCaptured
from payment_service.adapters.snap import PAYMENT_PATH

if TYPE_CHECKING:
    from conftest import Payment


async def test_twenty_identical_callbacks_capture_once(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank:
        await bank.get_token()
        assert bank.access_token is not None
        cno = str(bill["virtual_account_no"])[len(bank.partner_service_id):]
        request = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(cno, 12_500),
                                            access_token=bank.access_token)
        answers = await asyncio.gather(*(bank.send(request) for _ in range(20)))
    codes = Counter(body["responseCode"] for _, body in answers)
    assert codes == {"2002500": 1, "4042518": 19}
    assert {body["virtualAccountData"]["paymentFlagStatus"] for _, body in answers} == {"00"}
    assert await payment.pool.fetchval("SELECT count(*) FROM payments WHERE bill_id = $1", bill["bill_id"]) == 1
    assert len(await payment.events(PaymentCaptured.TYPE, bill["order_id"])) == 1


async def test_one_payment_resent_under_five_external_ids_captures_once(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank:
        cno = str(bill["virtual_account_no"])[len(bank.partner_service_id):]
        await bank.get_token()
        answers = await asyncio.gather(*(
            bank.pay(cno, 12_500, payment_request_id="five-ids", flag_advise="N" if i == 0 else "Y")
            for i in range(5)
        ))
    assert [body["responseCode"] for _, body in answers] == ["2002500"] * 5
    assert await payment.pool.fetchval("SELECT count(*) FROM payments WHERE bill_id = $1", bill["bill_id"]) == 1
    assert await payment.pool.fetchval("SELECT count(*) FROM snap_requests WHERE payment_request_id = 'five-ids'") == 5
    [event] = await payment.events(PaymentCaptured.TYPE, bill["order_id"])
    assert isinstance(event, PaymentCaptured) and event.payment_request_id == "five-ids"
