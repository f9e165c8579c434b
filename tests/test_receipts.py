"""Receipts of paid orders through the running services (real processes, real servers).

* before its payment an order has no receipt (409 ``not_paid``); another account's order, or a
  partner's, is 404 as for the order view;
* once paid, ``GET /v1/orders/{id}/receipt`` is a PDF that opens and shows the figures, and with
  ``Accept: application/json`` the same facts, matching the order and the payment the bank made
  (duty Rp 10.000 x n and the fee apart, paid time, method, the bank's reference, serials, no
  refunds); its number never changes;
* orders paid concurrently get numbers that run on with none skipped and none twice: the receipts
  of a year are exactly 1..N;
* a partner system reads the receipts of its own orders with its ``X-Api-Key``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.documents import pdf_text
from emeterai_testkit.fixtures import eventually, fetchval
from emeterai_testkit.platform import Platform
from order_service.domain.receipt import receipt_year, rupiah, wib

STOCK = 80
PARTNER_ID = "casn-receipts"
PARTNER_KEY = "casn-receipts-key-0123456789abcdef"
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    partners: Path = tmp_path_factory.mktemp("receipt-partners") / "partners.json"
    partners.write_text(json.dumps({"partners": [
        {"partner_id": PARTNER_ID, "api_key": PARTNER_KEY, "webhook_secret": "whsec-receipts", "max_quantity": 50}]}))
    async with purchase_platform(stock=STOCK, minting_overrides={"stock_wait_s": 0},
                                 order_overrides={"partners_file": str(partners)}) as p:
        yield p


async def get_receipt(session: aiohttp.ClientSession, platform: Platform, order_id: str,
                      headers: dict[str, str]) -> tuple[int, str, bytes]:
    async with session.get(f"{platform.url('order')}/v1/orders/{order_id}/receipt", headers=headers) as r:
        return r.status, r.content_type, await r.read()


async def receipt_json(session: aiohttp.ClientSession, platform: Platform, order_id: str,
                       headers: dict[str, str]) -> dict[str, Any]:
    status, content_type, body = await get_receipt(session, platform, order_id, {**headers, **JSON})
    assert (status, content_type) == (200, "application/json"), body
    data: dict[str, Any] = json.loads(body)
    return data


async def bank_payment(platform: Platform, order_id: str) -> dict[str, Any]:
    """The payment the bank made for the order, as the payment service recorded it."""
    row = await fetchval(platform.settings["payment"],
                         "SELECT row_to_json(p)::text FROM payments p WHERE order_id = $1", uuid.UUID(order_id))
    assert row is not None
    found: dict[str, Any] = json.loads(row)
    return found


async def test_a_paid_order_has_a_receipt_as_pdf_and_json(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        buyer, other = Buyer(session, platform.url("order")), Buyer(session, platform.url("order"))
        await buyer.register(name="Siti Aminah")
        await other.register()
        order_id, bill = await buyer.billed_order(2)

        status, _, body = await get_receipt(session, platform, order_id, {**buyer.auth, **JSON})
        assert (status, json.loads(body)["error"]["code"]) == (409, "not_paid")
        status, content_type, body = await get_receipt(session, platform, order_id, buyer.auth)  # PDF wanted
        assert (status, content_type, json.loads(body)["error"]["code"]) == (409, "application/json", "not_paid")
        for headers in (other.auth, {**other.auth, **JSON}, {"X-Api-Key": PARTNER_KEY}):
            status, _, body = await get_receipt(session, platform, order_id, headers)
            assert (status, json.loads(body)["error"]["code"]) == (404, "order_not_found")
        status, _, _ = await get_receipt(session, platform, order_id, {})
        assert status == 401

        bank = platform.simulator(session)
        await buyer.pay(order_id, bank, platform.customer_no)
        order = await buyer.status_becomes(order_id, "FULFILLED")
        paid = await bank_payment(platform, order_id)

        receipt = await receipt_json(session, platform, order_id, buyer.auth)
        year = receipt_year(datetime.fromisoformat(receipt["paid_at"]))
        assert receipt["receipt_no"].startswith(f"EM-{year}-") and len(receipt["receipt_no"]) == 15
        assert receipt["order_id"] == order_id
        assert datetime.fromisoformat(receipt["paid_at"]) == datetime.fromisoformat(paid["captured_at"])
        assert (receipt["quantity"], receipt["duty_per_stamp"], receipt["duty"], receipt["fee"], receipt["total"]) == (
            2, 10_000, 20_000, 5_000, order["amount"])
        assert receipt["total"] == bill["amount"] == 25_000
        assert receipt["payment"] == {
            "method": "va", "reference": paid["reference_no"], "bank": paid["client_id"],
            "payment_request_id": paid["payment_request_id"], "virtual_account_no": bill["virtual_account_no"]}
        assert paid["reference_no"]  # the development bank sends a referenceNo
        assert sorted(receipt["serials"]) == sorted(order["serials"]) and len(receipt["serials"]) == 2
        assert receipt["refunds"] == []

        for accept in (None, "application/pdf", "*/*", "application/json;q=0.5, application/pdf"):
            headers = buyer.auth if accept is None else {**buyer.auth, "Accept": accept}
            status, content_type, pdf = await get_receipt(session, platform, order_id, headers)
            assert (status, content_type) == (200, "application/pdf")
            assert pdf.startswith(b"%PDF-")
        [text] = pdf_text(pdf)
        lines = text.splitlines()
        for shown in (receipt["receipt_no"], order_id, "Siti Aminah", wib(datetime.fromisoformat(receipt["paid_at"])),
                      "2", "Rp 10.000 x 2 = Rp 20.000", rupiah(5_000), rupiah(25_000), "Virtual Account (VA)",
                      paid["client_id"], paid["reference_no"], bill["virtual_account_no"], *order["serials"],
                      "Tidak ada"):
            assert shown in lines, (shown, lines)

        # The number never changes.
        again = await receipt_json(session, platform, order_id, buyer.auth)
        assert again == receipt
        assert await fetchval(platform.settings["order"], "SELECT count(*) FROM receipts WHERE order_id = $1",
                              uuid.UUID(order_id)) == 1


async def test_numbers_of_concurrently_paid_orders_run_on_without_gaps(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        buyers = [Buyer(session, platform.url("order")) for _ in range(4)]
        await asyncio.gather(*(b.register() for b in buyers))
        owners = [b for b in buyers for _ in range(5)]
        order_ids = list(await asyncio.gather(*(owner.order(1) for owner in owners)))
        await asyncio.gather(*(owner.bill(o) for owner, o in zip(owners, order_ids, strict=True)))
        bank = platform.simulator(session)
        await asyncio.gather(*(owner.pay(o, bank, platform.customer_no)
                               for owner, o in zip(owners, order_ids, strict=True)))
        await asyncio.gather(*(owner.status_becomes(o, "FULFILLED")
                               for owner, o in zip(owners, order_ids, strict=True)))
        receipts = await asyncio.gather(*(receipt_json(session, platform, o, owner.auth)
                                          for owner, o in zip(owners, order_ids, strict=True)))

    numbers = [r["receipt_no"] for r in receipts]
    assert len(set(numbers)) == 20
    for r in receipts:
        prefix, year, seq = r["receipt_no"].split("-")
        assert (prefix, int(year), len(seq)) == ("EM", receipt_year(datetime.fromisoformat(r["paid_at"])), 7)
    # Every receipt of each year, these and the others of this platform: exactly 1..N, none twice.
    order_db = platform.settings["order"]
    by_year = json.loads(await fetchval(order_db, "SELECT json_object_agg(year, seqs)::text FROM (SELECT year, "
                                                  "array_agg(seq ORDER BY seq) AS seqs FROM receipts GROUP BY year) y"))
    for year, seqs in by_year.items():
        assert seqs == list(range(1, len(seqs) + 1)), year
        assert await fetchval(order_db, "SELECT last_no FROM receipt_counters WHERE year = $1", int(year)) == len(seqs)
    assert sum(len(seqs) for seqs in by_year.values()) == await fetchval(
        order_db, "SELECT count(DISTINCT order_id) FROM order_history WHERE new_status = 'PAID'")
    # A contiguous run for the concurrent payments of one year.
    for year in {n.split("-")[1] for n in numbers}:
        seqs = sorted(int(n.split("-")[2]) for n in numbers if n.split("-")[1] == year)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_a_partner_reads_the_receipts_of_its_orders(platform: Platform) -> None:
    headers = {"X-Api-Key": PARTNER_KEY}
    async with aiohttp.ClientSession() as session:
        url = platform.url("order")
        async with session.post(f"{url}/v1/orders", json={"quantity": 3},
                                headers={**headers, "Idempotency-Key": str(uuid.uuid4())}) as r:
            assert r.status == 202, await r.text()
            order_id = (await r.json())["order_id"]

        async def billed() -> dict[str, Any] | None:
            async with session.get(f"{url}/v1/orders/{order_id}", headers=headers) as r:
                payment: dict[str, Any] | None = (await r.json())["payment"]
                return payment

        bill = await eventually(billed, timeout_s=60, message="partner order billed")
        status, _, body = await get_receipt(session, platform, order_id, {**headers, **JSON})
        assert (status, json.loads(body)["error"]["code"]) == (409, "not_paid")
        bank = platform.simulator(session)
        _, answer = await bank.pay(platform.customer_no(bill["virtual_account_no"]), bill["amount"])
        assert answer["responseCode"] == "2002500", answer

        async def has_receipt() -> dict[str, Any] | None:
            status, _, body = await get_receipt(session, platform, order_id, {**headers, **JSON})
            return json.loads(body) if status == 200 else None

        receipt = await eventually(has_receipt, timeout_s=90, message="partner receipt")
        assert (receipt["quantity"], receipt["duty"], receipt["fee"], receipt["total"]) == (3, 30_000, 7_500, 37_500)
        status, content_type, pdf = await get_receipt(session, platform, order_id, headers)
        assert (status, content_type) == (200, "application/pdf")
        lines = pdf_text(pdf)[0].splitlines()
        assert f"{PARTNER_ID} (partner)" in lines and "Rp 10.000 x 3 = Rp 30.000" in lines
        buyer = Buyer(session, url)
        await buyer.register()
        status, _, _ = await get_receipt(session, platform, order_id, buyer.auth)
        assert status == 404
