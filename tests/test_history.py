"""History lists, the honest queue, shed answers and two partner events, through real processes of all
four services.

* ``GET /v1/orders``: paging through more orders than a page holds while new orders are placed between
  pages: newest first, no repeats, no gaps, the new ones only on a fresh first page; entries exactly
  as ``GET /v1/orders/{id}``; another account's (and a partner's) orders never listed; a bad cursor is
  400 ``invalid_cursor``, a bad limit 422 ``invalid_limit``.
* ``GET /v1/stampings`` and the queue: with the stamping worker stopped, queued jobs show positions
  1..n in upload order with an ETA, on the single view and in the list (newest first, paged); once
  the worker is back they drain to DONE and the queue is gone.
* Shed answers: a rate-limited request is 429 with ``retry_after_s`` and ``retry_at`` (now +
  ``retry_after_s``) and the same ``Retry-After``; the published error schema of every 429/503 says so.
* Partner events: a partner's order that expires unpaid → ``order.expired``; a partner's stamping
  that fails → ``stamping.failed``; each once in the feed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.documents import sample_pdf
from emeterai_testkit.fixtures import eventually, fetchval
from emeterai_testkit.platform import Platform
from payment_service.adapters.banksim import BankSimulator

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]

STOCK = 40
DOCUMENT = sample_pdf(1)
PARTNER_ID, PARTNER_KEY = "casn-history", "casn-history-api-key-0123456789"
PARTNER = {"X-Api-Key": PARTNER_KEY}


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    partners = tmp_path_factory.mktemp("partners") / "partners.json"
    partners.write_text(json.dumps({"partners": [{"partner_id": PARTNER_ID, "api_key": PARTNER_KEY,
                                                  "max_quantity": 100}]}))
    async with purchase_platform(
            stock=STOCK, stamping=True, expiry_sweep_interval_s=0.5,
            order_overrides={"partners_file": str(partners), "order_burst_per_account": 1000},
            stamping_overrides={"partners_file": str(partners), "pdf_workers": 1,
                                "verify_rate_per_s": 0.001, "verify_burst": 1}) as p:
        yield p


class Partner(Buyer):
    """A partner system on the buyer routes: its X-Api-Key instead of a bearer token."""

    @property
    def auth(self) -> dict[str, str]:
        return PARTNER


async def get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                   status: int = 200) -> dict[str, Any]:
    async with session.get(url, headers=headers) as r:
        assert r.status == status, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def all_pages(session: aiohttp.ClientSession, url: str, headers: dict[str, str], key: str,
                    limit: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await get_json(session, f"{url}?limit={limit}" + (f"&cursor={cursor}" if cursor else ""), headers)
        assert len(page[key]) <= limit
        entries += page[key]
        cursor = page["next"]
        if cursor is None:
            return entries


async def upload(platform: Platform, session: aiohttp.ClientSession, headers: dict[str, str]) -> str:
    form = aiohttp.FormData()
    form.add_field("file", DOCUMENT, filename="lamaran.pdf", content_type="application/pdf")
    for name, value in (("page", 1), ("x", 72), ("y", 72)):
        form.add_field(name, str(value))
    async with session.post(f"{platform.url('stamping')}/v1/stampings", data=form,
                            headers={**headers, "Idempotency-Key": str(uuid.uuid4())}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["stamping_id"])


async def stamps_available(platform: Platform, session: aiohttp.ClientSession, headers: dict[str, str],
                           count: int) -> None:
    """The stamping service has learnt of ``count`` unused stamps of the caller (minting's event)."""
    async def learnt() -> bool:
        quota = await get_json(session, f"{platform.url('stamping')}/v1/quota", headers)
        return int(quota["available"]) >= count

    await eventually(learnt, timeout_s=90, interval_s=0.2, message=f"{count} stamps in the stamping quota")


async def stamping(platform: Platform, session: aiohttp.ClientSession, headers: dict[str, str],
                   stamping_id: str) -> dict[str, Any]:
    return await get_json(session, f"{platform.url('stamping')}/v1/stampings/{stamping_id}", headers)


def without_eta(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**v, "queue": {**v["queue"], "eta_s": None} if v["queue"] else None} for v in views]


async def stamping_worker_stopped(platform: Platform) -> None:
    platform.proc("stamping", "worker").kill()


async def feed_has(platform: Platform, session: aiohttp.ClientSession, type_: str,
                   about: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The partner's feed once it holds an event of ``type_`` matching ``about``; all such events."""
    async def found() -> list[dict[str, Any]]:
        page = await get_json(session, f"{platform.url('order')}/v1/partner/events?limit=500", PARTNER)
        return [e for e in page["events"] if e["type"] == type_ and about(e["data"])]

    events: list[dict[str, Any]] = await eventually(found, timeout_s=90, interval_s=0.3,
                                                    message=f"{type_} in the partner's feed")
    return events


# --- tests -------------------------------------------------------------------------------------------------


async def test_orders_page_newest_first_without_repeats_or_gaps_while_orders_are_placed(platform: Platform) -> None:
    url = f"{platform.url('order')}/v1/orders"
    async with aiohttp.ClientSession() as session:
        buyer, other = Buyer(session, platform.url("order")), Buyer(session, platform.url("order"))
        await buyer.register()
        await other.register(phone="+6281299999999")
        placed = [await buyer.order(1) for _ in range(23)]
        theirs = [await other.order(1) for _ in range(2)]
        partner = Partner(session, platform.url("order"))
        partners = [await partner.order(1)]

        seen: list[str] = []
        first = await get_json(session, f"{url}?limit=10", buyer.auth)
        seen += [o["order_id"] for o in first["orders"]]
        cursor = first["next"]
        later = []
        while cursor is not None:
            later.append(await buyer.order(1))  # placed between pages: never shifts the pages still to come
            page = await get_json(session, f"{url}?limit=10&cursor={cursor}", buyer.auth)
            assert len(page["orders"]) <= 10
            seen += [o["order_id"] for o in page["orders"]]
            cursor = page["next"]
        assert seen == placed[::-1], "newest first, each once, none missing"
        assert len(later) == 2

        # A fresh first page starts with the orders placed meanwhile; the default limit is 20.
        fresh = await get_json(session, url, buyer.auth)
        assert [o["order_id"] for o in fresh["orders"]] == (later[::-1] + placed[::-1])[:20]
        assert fresh["next"] is not None
        everything = await all_pages(session, url, buyer.auth, "orders", 100)
        assert [o["order_id"] for o in everything] == later[::-1] + placed[::-1]

        # Only the caller's own: another buyer and a partner each see theirs alone.
        assert [o["order_id"] for o in await all_pages(session, url, other.auth, "orders", 7)] == theirs[::-1]
        assert [o["order_id"] for o in await all_pages(session, url, PARTNER, "orders", 7)] == partners

        # Entries are the order views exactly (once the bill is attached, nothing changes under us).
        await buyer.bill(later[-1])
        [listed] = (await get_json(session, f"{url}?limit=1", buyer.auth))["orders"]
        assert listed == await buyer.get(later[-1])
        assert listed["payment"] is not None

        # Refusals.
        for bad in ("garbage", "!!", "eyJ0IjoxfQ", "e30", str(uuid.uuid4()), "x" * 500):
            body = await get_json(session, f"{url}?cursor={bad}", buyer.auth, status=400)
            assert body["error"]["code"] == "invalid_cursor", bad
        for bad in ("0", "101", "-1", "ten", "1.5", ""):
            body = await get_json(session, f"{url}?limit={bad}", buyer.auth, status=422)
            assert body["error"]["code"] == "invalid_limit", bad
        async with session.get(url) as r:
            assert r.status == 401


async def test_queued_stampings_show_their_place_and_drain(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    jobs = 4
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register(phone="+6281211111111")
        order_id = await buyer.paid_order(jobs, bank_client(platform, session), platform.customer_no)
        await buyer.status_becomes(order_id, "FULFILLED")
        await stamps_available(platform, session, buyer.auth, jobs)

        await stamping_worker_stopped(platform)
        try:
            ids = [await upload(platform, session, buyer.auth) for _ in range(jobs)]
            views = [await stamping(platform, session, buyer.auth, sid) for sid in ids]
            assert [v["status"] for v in views] == ["QUEUED"] * jobs
            assert [v["queue"]["position"] for v in views] == list(range(1, jobs + 1))
            assert all(v["queue"]["eta_s"] >= 1 for v in views), views

            # The list: newest first, paged, the same views with their place in the queue.
            url = f"{platform.url('stamping')}/v1/stampings"
            listed = await all_pages(session, url, buyer.auth, "stampings", 3)
            assert [s["stamping_id"] for s in listed] == ids[::-1]
            assert [s["queue"]["position"] for s in listed] == list(range(jobs, 0, -1))
            assert all(s["queue"]["eta_s"] >= 1 for s in listed), listed
            assert without_eta(listed[::-1]) == without_eta(views)  # the ETA follows the rate measured meanwhile
            body = await get_json(session, f"{url}?cursor=nope", buyer.auth, status=400)
            assert body["error"]["code"] == "invalid_cursor"
            body = await get_json(session, f"{url}?limit=1000", buyer.auth, status=422)
            assert body["error"]["code"] == "invalid_limit"
            other = Buyer(session, platform.url("order"))
            await other.register(phone="+6281222222222")
            assert (await get_json(session, url, other.auth)) == {"stampings": [], "next": None}
        finally:
            await platform.start(("stamping", "worker"))

        async def drained() -> list[dict[str, Any]] | None:
            now = [await stamping(platform, session, buyer.auth, sid) for sid in ids]
            return now if all(v["status"] in ("DONE", "FAILED") for v in now) else None

        done = await eventually(drained, timeout_s=180, interval_s=0.5, message="the queued jobs to drain")
        assert [(v["status"], v["queue"]) for v in done] == [("DONE", None)] * jobs
        listed = await all_pages(session, f"{platform.url('stamping')}/v1/stampings", buyer.auth, "stampings", 100)
        assert listed == done[::-1]


async def test_a_shed_answer_says_when_to_come_back(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        answers = []
        for _ in range(2):  # a burst of 1 at 0.001/s: the second one is refused
            form = aiohttp.FormData()
            form.add_field("file", b"not a pdf", filename="x.pdf", content_type="application/pdf")
            async with session.post(f"{platform.url('stamping')}/v1/verify", data=form) as r:
                answers.append((r.status, r.headers.get("Retry-After"), await r.json()))
        status, retry_after, body = answers[1]
        assert status == 429, answers
        error = body["error"]
        assert error["code"] == "rate_limited" and error["message"]
        assert retry_after is not None and int(retry_after) == error["retry_after_s"] >= 1
        retry_at = datetime.fromisoformat(error["retry_at"])
        assert retry_at.tzinfo is not None and retry_at.utcoffset() == timedelta(0)
        now = datetime.now(UTC)
        assert now - timedelta(seconds=5) <= retry_at - timedelta(seconds=error["retry_after_s"]) <= now

        # Every 429 and 503 of every service is documented with that body and the header.
        for service in ("order", "payment", "minting", "stamping"):
            doc = await get_json(session, f"{platform.url(service)}/openapi.json", {})
            shed = doc["components"]["schemas"]["ShedDetail"]
            assert {"code", "message", "retry_after_s", "retry_at"} <= set(shed["required"])
            for path, methods in doc["paths"].items():
                for method, operation in methods.items():
                    for status_code in ("429", "503"):
                        answer = operation["responses"].get(status_code)
                        if answer is None or path == "/readyz":
                            continue
                        assert answer["content"]["application/json"]["schema"] == {
                            "$ref": "#/components/schemas/ShedBody"}, (service, method, path, status_code)
                        assert "Retry-After" in answer["headers"]


async def test_partner_hears_of_an_expired_order_and_a_failed_stamping_once(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    async with aiohttp.ClientSession() as session:
        partner = Partner(session, platform.url("order"))
        lapsed, _ = await partner.billed_order(3)
        await fetchval(platform.settings["payment"],
                       "UPDATE bills SET expires_at = now() - interval '1 second' WHERE order_id = $1::uuid "
                       "RETURNING expires_at", lapsed)
        await partner.status_becomes(lapsed, "EXPIRED", timeout_s=90)
        [expired] = await feed_has(platform, session, "order.expired", lambda d: d["order_id"] == lapsed)
        assert (expired["data"]["quantity"], expired["data"]["amount"]) == (3, (await partner.get(lapsed))["amount"])

        # A stamping of the partner's that fails for good: its uploaded document is gone before a
        # worker takes it (as past its retention), so the job fails and the serial is free again.
        order_id = await partner.paid_order(1, bank_client(platform, session), platform.customer_no)
        [sn] = (await partner.status_becomes(order_id, "FULFILLED"))["serials"]
        await stamps_available(platform, session, PARTNER, 1)
        await stamping_worker_stopped(platform)
        try:
            sid = await upload(platform, session, PARTNER)
            assert (await stamping(platform, session, PARTNER, sid))["sn"] == sn
            await fetchval(platform.settings["stamping"],
                           "DELETE FROM documents WHERE stamping_id = $1::uuid AND kind = 'original' RETURNING 1", sid)
        finally:
            await platform.start(("stamping", "worker"))
        failed_job = await eventually(
            lambda: _finished(platform, session, sid), timeout_s=120, interval_s=0.5, message=f"stamping {sid} ends")
        assert failed_job["status"] == "FAILED", failed_job
        [failed] = await feed_has(platform, session, "stamping.failed", lambda d: d["stamping_id"] == sid)
        assert failed["data"] == {"stamping_id": sid, "sn": sn, "order_id": order_id, "error": failed_job["error"],
                                  "failed_at": failed["data"]["failed_at"]}

        # Each once: the feed holds one of each, whatever the redeliveries.
        page = await get_json(session, f"{platform.url('order')}/v1/partner/events?limit=500", PARTNER)
        assert [e["data"].get("order_id") for e in page["events"] if e["type"] == "order.expired"] == [lapsed]
        assert [e["data"]["stamping_id"] for e in page["events"] if e["type"] == "stamping.failed"] == [sid]


async def _finished(platform: Platform, session: aiohttp.ClientSession, sid: str) -> dict[str, Any] | None:
    view = await stamping(platform, session, PARTNER, sid)
    return view if view["status"] in ("DONE", "FAILED") else None
