"""QRIS payments end to end: the acquirer is a real HTTP server (the simulator in
``payment_service.adapters.acquirersim``), the platform real processes on the real PostgreSQL and
RabbitMQ. The payment worker generates each QR (never the buyer's request); the acquirer's notify
captures through the same ``payment.captured.v1`` as a VA payment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.fixtures import eventually, fetchval
from emeterai_testkit.qris import Qris, captures, partner_reference_of, qris_platform
from payment_service.adapters.acquirersim import AcquirerSimulator
from payment_service.adapters.snap.qris import crc_valid, parse_tlv


@pytest.fixture(scope="module")
async def qris(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Qris]:
    async with qris_platform(purchase_platform, tmp_path_factory.mktemp("qris"), stock=50, qris_interval_s=0.2,
                             acquirer_timeout_s=2.0) as q:
        yield q


async def qris_order(session: aiohttp.ClientSession, q: Qris, quantity: int = 1) -> tuple[Buyer, str, dict[str, Any]]:
    buyer = Buyer(session, q.platform.url("order"))
    await buyer.register()
    order_id = await buyer.order(quantity, payment_method="qris")
    return buyer, order_id, await buyer.bill(order_id)


async def test_qris_order_shows_the_qr_and_a_notify_fulfils_it_once(qris: Qris) -> None:
    async with aiohttp.ClientSession() as session:
        buyer, order_id, payment = await qris_order(session, qris, 2)
        assert payment["method"] == "qris" and set(payment) == {"method", "qr_content", "amount", "expires_at"}
        prn = await partner_reference_of(qris.platform, order_id)
        assert payment["qr_content"] == qris.sim.qrs[prn].qr_content
        assert crc_valid(payment["qr_content"])
        fields = parse_tlv(payment["qr_content"])
        assert (fields["01"], fields["53"], fields["54"]) == ("12", "360", str(payment["amount"]))

        # a bad signature, a wrong amount, an unknown reference: their codes and no change
        status, body = await qris.sim.notify(prn, status="00", bad_signature=True)
        assert (status, body["responseCode"]) == (401, "4015200"), body
        status, body = await qris.sim.notify(prn, status="00", amount=payment["amount"] + 1)
        assert (status, body["responseCode"]) == (404, "4045213"), body
        status, body = await qris.sim.notify("EM-no-such-reference", status="00", amount=payment["amount"])
        assert (status, body["responseCode"]) == (404, "4045201"), body
        status, body = await qris.sim.notify(prn, status="00", drop_field="amount")
        assert (status, body["responseCode"]) == (400, "4005202"), body
        assert await captures(qris.platform, order_id) == 0
        assert (await buyer.get(order_id))["status"] == "AWAITING_PAYMENT"

        # the payer pays: notified 00 -> captured once -> FULFILLED; the same notify again changes nothing
        answers = await qris.sim.pay(prn, times=2)
        assert [(s, b["responseCode"]) for s, b in answers] == [(200, "2005200"), (200, "2005200")]
        order = await buyer.status_becomes(order_id, "FULFILLED", timeout_s=90)
        assert len(order["serials"]) == 2
        status, body = await qris.sim.notify(prn)
        assert (status, body["responseCode"]) == (200, "2005200"), body
    payment_db = qris.platform.settings["payment"]
    assert await captures(qris.platform, order_id) == 1
    assert await fetchval(payment_db, "SELECT count(*) FROM payments p JOIN bills b USING (bill_id)"
                          " WHERE b.order_id = $1::uuid AND p.reference_no = $2",
                          order_id, qris.sim.qrs[prn].rrn) == 1
    # the serials came straight from payment.captured (it names the buyer): no order.paid hop
    assert await fetchval(qris.platform.settings["order"], "SELECT count(*) FROM outbox WHERE message_type ="
                          " 'order.paid.v1' AND correlation_id = $1", order_id) == 0


async def test_a_token_taken_with_a_bad_key_is_refused(qris: Qris) -> None:
    """The acquirer authenticates with its RSA key: the merchant's own key does not get a token."""
    other = AcquirerSimulator(qris.sim.entry, qris.sim.entry["private_key_pem"].encode(), qris.platform.url("payment"))
    with pytest.raises(RuntimeError, match="4017300"):
        async with aiohttp.ClientSession() as session:
            await other._merchant_token(session)


async def test_generate_failing_twice_then_succeeding_makes_one_qr(qris: Qris) -> None:
    qris.sim.fail_generate(2)
    async with aiohttp.ClientSession() as session:
        _, order_id, payment = await qris_order(session, qris)
    prn = await partner_reference_of(qris.platform, order_id)
    calls = [c for c in qris.sim.generate_calls if c == prn]
    assert len(calls) == 3  # two 500s, then the QR, all with the one partnerReferenceNo
    assert [q for q in qris.sim.qrs.values() if q.partner_reference_no == prn] == [qris.sim.qrs[prn]]
    assert payment["qr_content"] == qris.sim.qrs[prn].qr_content
    assert await fetchval(qris.platform.settings["payment"], "SELECT count(*) FROM bills WHERE order_id = $1::uuid",
                          order_id) == 1


async def test_a_generate_whose_answer_was_lost_is_queried_not_made_again(qris: Qris) -> None:
    """The acquirer made the QR but we never saw the answer: 4094701, then a query gives it."""
    async with aiohttp.ClientSession() as session:
        _, order_id, payment = await qris_order(session, qris)
    prn = await partner_reference_of(qris.platform, order_id)
    # forget our copy, as if the answer had been lost: the worker generates again, gets 4094701, queries
    payment_db = qris.platform.settings["payment"]
    await fetchval(payment_db, "UPDATE bills SET qr_content = NULL, qr_reference_no = NULL WHERE order_id = $1::uuid"
                   " RETURNING 1", order_id)

    async def regenerated() -> bool:
        return bool(await fetchval(payment_db, "SELECT qr_content IS NOT NULL FROM bills WHERE order_id = $1::uuid",
                                   order_id))

    await eventually(regenerated, timeout_s=60, message="QR kept again")
    assert await fetchval(payment_db, "SELECT qr_content FROM bills WHERE order_id = $1::uuid",
                          order_id) == payment["qr_content"]
    assert qris.sim.generate_calls.count(prn) == 2  # the first, then the one answered 4094701 (then queried)


async def test_a_payment_whose_notify_never_arrives_is_captured_by_query(qris: Qris) -> None:
    async with aiohttp.ClientSession() as session:
        buyer, order_id, _ = await qris_order(session, qris)
        prn = await partner_reference_of(qris.platform, order_id)
        assert await qris.sim.pay(prn, notify=False) == []
        # within 60 s by the platform's settings; the deadline here is generous for a loaded machine
        await buyer.status_becomes(order_id, "FULFILLED", timeout_s=120)
    assert await captures(qris.platform, order_id) == 1
    assert await fetchval(qris.platform.settings["payment"], "SELECT count(*) FROM qris_notifications n"
                          " JOIN bills b USING (bill_id) WHERE b.order_id = $1::uuid", order_id) == 0
    # the notify that comes late changes nothing
    status, body = await qris.sim.notify(prn)
    assert (status, body["responseCode"]) == (200, "2005200"), body
    assert await captures(qris.platform, order_id) == 1


async def expire_now(q: Qris, order_id: str) -> None:
    """The bill is due from now on (the worker's QRIS expiry cancels, queries, expires it); a short
    configured validity would race the platform instead."""
    await fetchval(q.platform.settings["payment"], "UPDATE bills SET expires_at = now() - interval '1 second'"
                   " WHERE order_id = $1::uuid RETURNING 1", order_id)


async def test_an_unpaid_qr_is_cancelled_and_expires(qris: Qris) -> None:
    async with aiohttp.ClientSession() as session:
        buyer, order_id, _ = await qris_order(session, qris)
        prn = await partner_reference_of(qris.platform, order_id)
        await expire_now(qris, order_id)
        await buyer.status_becomes(order_id, "EXPIRED", timeout_s=90)
    assert qris.sim.qrs[prn].status == "05"  # cancelled at the acquirer before the bill expired
    assert await captures(qris.platform, order_id) == 0


async def test_a_qr_paid_before_expiry_is_found_by_the_last_query(qris: Qris) -> None:
    async with aiohttp.ClientSession() as session:
        buyer, order_id, _ = await qris_order(session, qris)
        prn = await partner_reference_of(qris.platform, order_id)
        await fetchval(qris.platform.settings["payment"], "UPDATE bills SET qr_next_query_at = now() + interval"
                       " '1 hour' WHERE order_id = $1::uuid RETURNING 1", order_id)  # no routine query first
        qris.sim.mark_paid(prn)
        await expire_now(qris, order_id)
        await buyer.status_becomes(order_id, "FULFILLED", timeout_s=90)
    assert await captures(qris.platform, order_id) == 1


async def test_a_payment_after_expiry_is_refunded_once_through_qr_mpm_refund(qris: Qris) -> None:
    async with aiohttp.ClientSession() as session:
        buyer, order_id, payment = await qris_order(session, qris)
        prn = await partner_reference_of(qris.platform, order_id)
        await expire_now(qris, order_id)
        await buyer.status_becomes(order_id, "EXPIRED", timeout_s=90)
        qris.sim.time_out_refunds(1, slow_s=5.0)  # past our 2 s timeout: the first answer is lost
        answers = await qris.sim.pay(prn)  # the acquirer reports a payment after the bill expired
        assert [(s, b["responseCode"]) for s, b in answers] == [(200, "2005200")]
        await buyer.status_becomes(order_id, "REFUNDED", timeout_s=90)
    payment_db = qris.platform.settings["payment"]

    async def refunded() -> bool:
        return bool(await fetchval(payment_db, "SELECT r.status = 'DONE' FROM qris_refunds r JOIN bills b"
                                   " USING (bill_id) WHERE b.order_id = $1::uuid", order_id))

    await eventually(refunded, timeout_s=90, message="QRIS refund done")
    qr = qris.sim.qrs[prn]
    assert len(qr.refunds) == 1  # one refund at the acquirer
    (refund_no,) = qr.refunds
    calls = [c for c in qris.sim.refund_calls if c == refund_no]
    assert len(calls) >= 2  # timed out once, sent again with the same partnerRefundNo
    assert await fetchval(payment_db, "SELECT count(*) FROM qris_refunds r JOIN bills b USING (bill_id)"
                          " WHERE b.order_id = $1::uuid AND r.partner_refund_no = $2 AND r.refund_no = $3"
                          " AND r.amount = $4", order_id, refund_no, qr.refunds[refund_no]["refundNo"],
                          payment["amount"]) == 1
    assert await fetchval(payment_db, "SELECT count(*) FROM refunds WHERE order_id = $1::uuid", order_id) == 1
    assert await captures(qris.platform, order_id) == 1
