"""QRIS refunds, reconciliation and the acquirer simulator's controls, end to end: all four services as
real processes on the real PostgreSQL and RabbitMQ, the acquirer a real HTTP server (the simulator).

* A buyer's refund of unused stamps of a QRIS order goes back through ``qr-mpm-refund`` once, with
  one ``partnerRefundNo`` (even when the acquirer's first answer comes too late), and the order
  view and the receipt show it with the acquirer's ``refundNo``.
* A whole-order refund of a QRIS payment (paid after expiry; an order that cannot be fulfilled) shows
  the acquirer's ``refundNo`` too, although it arrives after ``payment.refunded.v1``.
* ``reconcile FILE --acquirer ID`` compares the simulator's settlement list (``acquirer settlement``)
  with our captured QRIS payments and refunds: matched, missing on either side, amount mismatches.
* The simulator's CLI pays and notifies twice, or late.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.documents import pdf_text
from emeterai_testkit.fixtures import REPO_ROOT, eventually, fetchval, settings_env
from emeterai_testkit.qris import Qris, qris_platform
from payment_service.adapters.snap.signatures import format_snap_timestamp

STOCK = 20
PER_STAMP = 10_000 + 2_500
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
async def qris(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Qris]:
    async with qris_platform(purchase_platform, tmp_path_factory.mktemp("qris-refunds"), stock=STOCK, stamping=True,
                             minting_overrides={"stock_wait_s": 0}, qris_interval_s=0.2, acquirer_timeout_s=2.0,
                             payout_interval_s=0.2) as q:
        yield q


async def qris_order(session: aiohttp.ClientSession, q: Qris, quantity: int) -> tuple[Buyer, str, str]:
    """A buyer's QRIS order with its QR made: (buyer, order id, partnerReferenceNo)."""
    buyer = Buyer(session, q.platform.url("order"))
    await buyer.register()
    order_id = await buyer.order(quantity, payment_method="qris")
    await buyer.bill(order_id)
    prn: str = await fetchval(q.platform.settings["payment"],
                              "SELECT partner_reference_no FROM bills WHERE order_id = $1::uuid", order_id)
    return buyer, order_id, prn


async def refund_in_view(buyer: Buyer, order_id: str, status: str, kind: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        refunds = [r for r in (await buyer.get(order_id))["refunds"] if r["kind"] == kind]
        return refunds[0] if refunds and refunds[0]["status"] == status else None

    refund: dict[str, Any] = await eventually(found, timeout_s=120, message=f"a {kind} refund {status}")
    return refund


async def receipt(session: aiohttp.ClientSession, q: Qris, buyer: Buyer, order_id: str) -> tuple[dict[str, Any],
                                                                                              str]:
    url = f"{q.platform.url('order')}/v1/orders/{order_id}/receipt"
    async with session.get(url, headers={**buyer.auth, **JSON}) as r:
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
    async with session.get(url, headers=buyer.auth) as r:
        assert r.status == 200 and r.content_type == "application/pdf"
        text = "\n".join(pdf_text(await r.read()))
    return data, text


async def test_a_buyers_refund_of_unused_stamps_goes_back_through_qr_mpm_refund_once(qris: Qris) -> None:
    async with aiohttp.ClientSession() as session:
        buyer, order_id, prn = await qris_order(session, qris, 2)
        await qris.sim.pay(prn)
        order = await buyer.status_becomes(order_id, "FULFILLED", timeout_s=120)
        qris.sim.time_out_refunds(1, slow_s=5.0)  # past our 2 s timeout: the first answer is lost
        refund_id = (await buyer.refund(order_id)).data["refund_id"]
        refund = await refund_in_view(buyer, order_id, "PAID_OUT", "stamps")

        qr = qris.sim.qrs[prn]
        partner_refund_no = f"RF{uuid.UUID(refund_id).hex}"
        assert list(qr.refunds) == [partner_refund_no]  # one refund at the acquirer, under our refund's number
        calls = [c for c in qris.sim.refund_calls if c == partner_refund_no]
        assert len(calls) >= 2  # timed out once, sent again with the same partnerRefundNo
        refund_no = qr.refunds[partner_refund_no]["refundNo"]
        assert qr.refunds[partner_refund_no]["refundAmount"] == {"value": f"{2 * PER_STAMP}.00", "currency": "IDR"}
        assert (refund["refund_id"], sorted(refund["serials"]), refund["amount"], refund["reference"]) == (
            refund_id, sorted(order["serials"]), 2 * PER_STAMP, refund_no)

        payment_db = qris.platform.settings["payment"]
        assert await fetchval(payment_db, "SELECT count(*) FROM partial_refunds WHERE refund_id = $1::uuid"
                              " AND via = 'qris' AND status = 'PAID_OUT' AND payout_reference = $2",
                              refund_id, refund_no) == 1
        assert await fetchval(payment_db, "SELECT count(*) FROM qris_refunds WHERE refund_id = $1::uuid"
                              " AND status = 'DONE' AND refund_no = $2", refund_id, refund_no) == 1
        assert await fetchval(payment_db, "SELECT count(*) FROM outbox WHERE message_type ="
                              " 'payment.partial_refund_paid_out.v1' AND correlation_id = $1", order_id) == 1

        data, text = await receipt(session, qris, buyer, order_id)
        assert [(r["refund_id"], r["kind"], r["status"], r["amount"], r["reference"]) for r in data["refunds"]] == [
            (refund_id, "stamps", "PAID_OUT", 2 * PER_STAMP, refund_no)]
        assert data["payment"]["method"] == "qris"
        assert refund_no in text


async def expire_now(q: Qris, order_id: str) -> None:
    await fetchval(q.platform.settings["payment"], "UPDATE bills SET expires_at = now() - interval '1 second'"
                   " WHERE order_id = $1::uuid RETURNING 1", order_id)


async def test_a_late_payments_refund_shows_the_acquirers_refund_no(qris: Qris) -> None:
    async with aiohttp.ClientSession() as session:
        buyer, order_id, prn = await qris_order(session, qris, 1)
        await expire_now(qris, order_id)
        await buyer.status_becomes(order_id, "EXPIRED", timeout_s=90)
        qris.sim.time_out_refunds(1, slow_s=5.0)
        assert [(s, b["responseCode"]) for s, b in await qris.sim.pay(prn)] == [(200, "2005200")]
        await buyer.status_becomes(order_id, "REFUNDED", timeout_s=90)
        refund = await refund_in_view(buyer, order_id, "PAID_OUT", "order")
        [(partner_refund_no, made)] = list(qris.sim.qrs[prn].refunds.items())
        assert (refund["amount"], refund["reference"], refund["serials"]) == (PER_STAMP, made["refundNo"], [])
        assert await fetchval(qris.platform.settings["payment"], "SELECT refund_id = $1::uuid FROM qris_refunds"
                              " WHERE partner_refund_no = $2", refund["refund_id"], partner_refund_no)
        async with session.get(f"{qris.platform.url('order')}/v1/orders/{order_id}/receipt",
                               headers={**buyer.auth, **JSON}) as r:
            assert r.status == 409  # never paid in time: no receipt


async def test_an_unfulfillable_orders_refund_is_on_its_receipt_with_the_refund_no(qris: Qris) -> None:
    """More stamps than the stock, no waiting for stock: paid, then refunded in full through the acquirer."""
    async with aiohttp.ClientSession() as session:
        buyer, order_id, prn = await qris_order(session, qris, STOCK + 5)
        await qris.sim.pay(prn)
        await buyer.status_becomes(order_id, "REFUNDED", timeout_s=120)
        refund = await refund_in_view(buyer, order_id, "PAID_OUT", "order")
        (made,) = qris.sim.qrs[prn].refunds.values()
        amount = (STOCK + 5) * PER_STAMP
        assert (refund["amount"], refund["reference"]) == (amount, made["refundNo"])
        assert made["refundAmount"]["value"] == f"{amount}.00"
        data, text = await receipt(session, qris, buyer, order_id)
        assert [(r["kind"], r["status"], r["amount"], r["reference"]) for r in data["refunds"]] == [
            ("order", "PAID_OUT", amount, made["refundNo"])]
        assert made["refundNo"] in text


async def run(q: Qris, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "payment_service", *args, env=settings_env(q.platform.settings["payment"]),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_reconcile_an_acquirers_settlement_list(qris: Qris, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        paid = []
        for _ in range(3):
            buyer, order_id, prn = await qris_order(session, qris, 1)
            await qris.sim.pay(prn)
            await buyer.status_becomes(order_id, "FULFILLED", timeout_s=120)
            paid.append(qris.sim.qrs[prn])
    a, b, c = paid

    listed = tmp_path / "settlement.csv"
    code, out, err = await run(qris, "acquirer", "--port", str(qris.port), "settlement", "--out", str(listed))
    assert code == 0, err
    with listed.open() as f:
        lines = list(csv.DictReader(f))
    assert {(x["referenceNo"], x["rrn"], x["amount"]) for x in lines if x["type"] == "payment"} >= {
        (q.reference_no, q.rrn, f"{q.amount}.00") for q in paid}

    edited = []
    for line in lines:
        if line["type"] == "payment" and line["referenceNo"] == a.reference_no:
            line["amount"] = str(a.amount + 1_000)  # the acquirer settled another amount
        elif line["type"] == "payment" and line["referenceNo"] == b.reference_no:
            continue  # the acquirer does not list a payment we captured
        elif line["type"] == "payment" and line["referenceNo"] == c.reference_no:
            line["referenceNo"] = ""  # named by its RRN only
        edited.append(line)
    later = format_snap_timestamp(datetime.now(UTC) + timedelta(minutes=5))
    edited.append({"type": "payment", "referenceNo": "999000111222", "amount": "12500.00", "time": later})
    edited.append({"type": "refund", "referenceNo": a.reference_no, "refundNo": "888000111222", "amount": "100",
                   "time": later})
    settlement = tmp_path / "edited.csv"
    with settlement.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(lines[0]))
        writer.writeheader()
        writer.writerows(edited)

    code, out, err = await run(qris, "reconcile", str(settlement), "--acquirer", qris.sim.entry["acquirer_id"])
    assert code == 0, err
    report = json.loads(out)
    assert report["acquirer"] == qris.sim.entry["acquirer_id"]
    assert set(report["counts"]) == {"lines", "matched", "missing_on_our_side", "missing_on_bank_side",
                                     "amount_mismatches", "duplicates_in_file"}
    assert c.reference_no in report["matched"]
    assert report["amount_mismatches"] == [{"referenceNo": a.reference_no, "ours": a.amount, "bank": a.amount + 1_000}]
    assert report["missing_on_bank_side"] == [b.reference_no]
    assert "999000111222" in report["missing_on_our_side"]
    assert report["duplicates_in_file"] == []
    refunds = report["refunds"]
    assert refunds["missing_on_our_side"] == ["888000111222"]
    assert refunds["missing_on_bank_side"] == [] and refunds["amount_mismatches"] == []

    bad = tmp_path / "bad.csv"
    bad.write_text("type,referenceNo,amount,time\npayment,,12500,2026-01-01T00:00:00\n")
    code, _, err = await run(qris, "reconcile", str(bad), "--acquirer", qris.sim.entry["acquirer_id"])
    assert code == 2 and "line 1" in err
    code, _, err = await run(qris, "reconcile", str(settlement), "--acquirer", "no-such-acquirer")
    assert code == 2 and "no-such-acquirer" in err


async def test_the_simulators_cli_notifies_twice_or_late(qris: Qris) -> None:
    payment_db = qris.platform.settings["payment"]
    async with aiohttp.ClientSession() as session:
        buyer, order_id, prn = await qris_order(session, qris, 1)
        code, out, err = await run(qris, "acquirer", "--port", str(qris.port), "pay", "--partner-reference-no", prn,
                                   "--times", "2")
        assert code == 0, err
        assert out.count("2005200") == 2
        await buyer.status_becomes(order_id, "FULFILLED", timeout_s=120)

        buyer, order_id, prn = await qris_order(session, qris, 1)
        await fetchval(payment_db, "UPDATE bills SET qr_next_query_at = now() + interval '1 hour'"
                       " WHERE order_id = $1::uuid RETURNING 1", order_id)  # no query finds it first
        code, out, err = await run(qris, "acquirer", "--port", str(qris.port), "pay", "--partner-reference-no", prn,
                                   "--late", "1")
        assert code == 0, err
        assert json.loads(out.split("\n", 1)[1]) == {"notified": [], "notify_in_s": 1.0}
        await buyer.status_becomes(order_id, "FULFILLED", timeout_s=120)
        answers = await eventually(lambda: [a for a in qris.sim.late_answers if a[0] == prn], timeout_s=60,
                                   message="the late notify's answer")
        assert [(status, body["responseCode"]) for _, status, body in answers] == [(200, "2005200")]

        async with session.post(f"http://127.0.0.1:{qris.port}/sim/pay", json={"partnerReferenceNo": prn,
                                                                               "times": "many"}) as r:
            assert r.status == 400
