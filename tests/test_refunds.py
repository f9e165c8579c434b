"""A buyer's refund of unused stamps, through real processes of all four services.

* Buy 3, stamp 1, refund: exactly the 2 unused serials become VOID in minting's registry and leave
  the stamping quota; the payment service records a refund of their amount and pays it out (the
  development bank); the order view lists the refund PAID_OUT; a partner's order gets
  ``order.refunded`` in its feed. The same Idempotency-Key twice is one refund; a second refund is
  409 ``nothing_to_refund``; another account's attempt is 404.
* The race: an upload (``POST /v1/stampings``) and a refund of the same fresh order started
  concurrently, many rounds. Each serial ends stamped (job DONE, registry STAMPED) or refunded
  (VOID, in the refund's serials, out of the quota), never both, and the refund's amount is that of
  the serials it voided. The stamping service decides, under the quota row locks both take.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from emeterai_testkit import invariants
from emeterai_testkit.clients import Buyer
from emeterai_testkit.documents import pdf_text, sample_pdf
from emeterai_testkit.fixtures import eventually
from emeterai_testkit.platform import Platform
from order_service.domain.receipt import rupiah
from payment_service.adapters.banksim import BankSimulator

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]

ROUNDS = 24
AT_ONCE = 4
STOCK = 3 + 1 + 2 * ROUNDS + 20
PER_STAMP = 10_000 + 2_500  # duty + the default service fee: the fee share is refunded with its stamp
DOCUMENT = sample_pdf(1)
PARTNER_ID, PARTNER_KEY = "casn-refunds", "casn-refunds-api-key-0123456789"
FINAL = ("PAID_OUT", "NOTHING")


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    partners = tmp_path_factory.mktemp("partners") / "partners.json"
    partner = {"partner_id": PARTNER_ID, "api_key": PARTNER_KEY, "max_quantity": 100}
    partners.write_text(json.dumps({"partners": [partner]}))
    async with purchase_platform(stock=STOCK, stamping=True, order_overrides={"partners_file": str(partners)},
                                 stamping_overrides={"partners_file": str(partners), "pdf_workers": 1},
                                 payout_interval_s=0.2) as p:
        yield p


# --- helpers -----------------------------------------------------------------------------------------------


async def rows(platform: Platform, service: str, query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(platform.settings[service].database_url)
    try:
        return [dict(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def fulfilled(platform: Platform, buyer: Buyer, quantity: int) -> tuple[str, list[str]]:
    bank = platform.simulator(buyer.session)
    order_id = await buyer.paid_order(quantity, bank, platform.customer_no)
    order = await buyer.status_becomes(order_id, "FULFILLED")
    return order_id, list(order["serials"])


def auth(buyer: Buyer) -> dict[str, str]:
    return buyer.auth if buyer.token else {}


async def quota(platform: Platform, buyer: Buyer) -> dict[str, Any]:
    async with buyer.session.get(f"{platform.url('stamping')}/v1/quota", headers=auth(buyer)) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def in_quota(platform: Platform, buyer: Buyer, serials: list[str]) -> None:
    async def learnt() -> bool:
        return set(serials) <= set((await quota(platform, buyer))["serials_available"])
    await eventually(learnt, timeout_s=90, interval_s=0.2, message=f"serials {serials} in the quota")


async def upload(platform: Platform, buyer: Buyer, sn: str | None = None) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", DOCUMENT, filename="lamaran.pdf", content_type="application/pdf")
    for name, value in (("page", 1), ("x", 72), ("y", 72), ("size", 100), *((("sn", sn),) if sn else ())):
        form.add_field(name, str(value))
    async with buyer.session.post(f"{platform.url('stamping')}/v1/stampings", data=form,
                                  headers={**auth(buyer), "Idempotency-Key": str(uuid.uuid4())}) as r:
        body: dict[str, Any] = await r.json()
        return r.status, body


async def job_ends(platform: Platform, buyer: Buyer, stamping_id: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        async with buyer.session.get(f"{platform.url('stamping')}/v1/stampings/{stamping_id}",
                                     headers=auth(buyer)) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
        return body if body["status"] in ("DONE", "FAILED") else None

    found: dict[str, Any] = await eventually(ended, timeout_s=120, interval_s=0.2,
                                             message=f"stamping {stamping_id} DONE or FAILED")
    return found


async def registry(platform: Platform, session: aiohttp.ClientSession, sn: str) -> str:
    async with session.get(f"{platform.url('minting')}/v1/stamps/{sn}") as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["status"])


async def registry_becomes(platform: Platform, session: aiohttp.ClientSession, sn: str, status: str) -> None:
    async def reached() -> bool:
        return await registry(platform, session, sn) == status
    await eventually(reached, timeout_s=90, interval_s=0.2, message=f"serial {sn} {status} in the registry")


async def refund_settles(buyer: Buyer, order_id: str, refund_id: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        [refund] = [r for r in (await buyer.get(order_id))["refunds"] if r["refund_id"] == refund_id]
        return refund if refund["status"] in FINAL else None

    found: dict[str, Any] = await eventually(final, timeout_s=120, interval_s=0.2,
                                             message=f"refund {refund_id} PAID_OUT or NOTHING")
    return found


# --- the refund of unused stamps ---------------------------------------------------------------------------


async def test_refund_voids_exactly_the_unused_stamps_and_pays_them_out(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id, serials = await fulfilled(platform, buyer, 3)
        await in_quota(platform, buyer, serials)
        status, job = await upload(platform, buyer, serials[0])
        assert status == 202, job
        assert (await job_ends(platform, buyer, job["stamping_id"]))["status"] == "DONE"
        await registry_becomes(platform, session, serials[0], "STAMPED")

        key = str(uuid.uuid4())
        first, again = await buyer.refund(order_id, key), await buyer.refund(order_id, key)
        assert first.data["refund_id"] == again.data["refund_id"]
        assert again.headers.get("Idempotent-Replayed") == "true"
        refund = await refund_settles(buyer, order_id, first.data["refund_id"])
        unused = serials[1:]
        assert (refund["status"], sorted(refund["serials"]), refund["amount"]) == ("PAID_OUT", sorted(unused),
                                                                                   2 * PER_STAMP)
        order = await buyer.get(order_id)
        assert order["status"] == "FULFILLED" and len(order["refunds"]) == 1
        for sn in unused:
            await registry_becomes(platform, session, sn, "VOID")
        assert await registry(platform, session, serials[0]) == "STAMPED"
        q = await quota(platform, buyer)
        assert not set(unused) & set(q["serials_available"]) and q["available"] == 0 and q["used"] == 1

        [paid] = await rows(platform, "payment", "SELECT * FROM partial_refunds WHERE order_id = $1::uuid", order_id)
        assert (str(paid["refund_id"]), paid["amount"], paid["status"]) == (refund["refund_id"], 2 * PER_STAMP,
                                                                            "PAID_OUT")
        assert paid["payout_reference"] and sorted(paid["serials"]) == sorted(unused)

        # the receipt lists the refund, in JSON and in the PDF
        async with session.get(f"{platform.url('order')}/v1/orders/{order_id}/receipt",
                               headers={**buyer.auth, "Accept": "application/json"}) as r:
            assert r.status == 200
            receipt = await r.json()
        assert [(x["refund_id"], sorted(x["serials"]), x["amount"], x["status"]) for x in receipt["refunds"]] == [
            (refund["refund_id"], sorted(unused), 2 * PER_STAMP, "PAID_OUT")]
        async with session.get(f"{platform.url('order')}/v1/orders/{order_id}/receipt", headers=buyer.auth) as r:
            assert r.status == 200 and r.content_type == "application/pdf"
            text = "\n".join(pdf_text(await r.read()))
        assert rupiah(2 * PER_STAMP) in text and all(sn in text for sn in unused)

        again_refund = await buyer.refund(order_id, ok=(409,))
        assert again_refund.code == "nothing_to_refund"
        other = Buyer(session, platform.url("order"))
        await other.register(phone="+6281299999999")
        assert (await other.refund(order_id, ok=(404,))).code == "order_not_found"


async def test_a_partner_order_refund_reaches_the_feed(platform: Platform) -> None:
    async with aiohttp.ClientSession(headers={"X-Api-Key": PARTNER_KEY}) as as_partner:
        partner = Buyer(as_partner, platform.url("order"))  # the X-Api-Key authenticates
        order_id, serials = await fulfilled(platform, partner, 1)
        refund = await refund_settles(partner, order_id, (await partner.refund(order_id)).data["refund_id"])
        assert (refund["status"], refund["serials"], refund["amount"]) == ("PAID_OUT", serials, PER_STAMP)

        async def told() -> list[dict[str, Any]]:
            async with as_partner.get(f"{platform.url('order')}/v1/partner/events?after=0&limit=500") as r:
                assert r.status == 200, await r.text()
                events = (await r.json())["events"]
            return [e for e in events if e["type"] == "order.refunded" and e["data"]["order_id"] == order_id]

        [event] = await eventually(told, timeout_s=60, message="order.refunded in the partner feed")
        assert event["data"] == {"order_id": order_id, "refund_id": refund["refund_id"], "serials": serials,
                                 "amount": PER_STAMP}


# --- the race: stamped or refunded, never both --------------------------------------------------------------


async def race_round(platform: Platform, session: aiohttp.ClientSession, n: int) -> str:
    buyer = Buyer(session, platform.url("order"))
    await buyer.register(phone=f"+62813{n:08d}")
    order_id, serials = await fulfilled(platform, buyer, 1 + n % 2)
    await in_quota(platform, buyer, serials)

    async def stamp() -> dict[str, Any] | None:
        await asyncio.sleep(random.uniform(0, 0.05))  # vary who comes first; nothing asserts on it
        status, body = await upload(platform, buyer)
        if status == 409:
            assert body["error"]["code"] == "no_quota", body
            return None
        assert status == 202, body
        return await job_ends(platform, buyer, body["stamping_id"])

    async def refund() -> dict[str, Any] | None:
        await asyncio.sleep(random.uniform(0, 0.15))
        answer = await buyer.refund(order_id, ok=(202, 409))
        if answer.status == 409:
            assert answer.code == "nothing_to_refund", answer.body
            return None
        return await refund_settles(buyer, order_id, answer.data["refund_id"])

    job, refunded = await asyncio.gather(stamp(), refund())
    stamped = {job["sn"]} if job is not None and job["status"] == "DONE" else set()
    voided = set(refunded["serials"]) if refunded is not None and refunded["status"] == "PAID_OUT" else set()
    assert not stamped & voided, f"order {order_id}: {stamped & voided} both stamped and refunded"
    assert stamped | voided == set(serials), f"order {order_id}: stamped {stamped}, refunded {voided} of {serials}"
    if refunded is not None:
        assert refunded["amount"] == PER_STAMP * len(voided)
        assert set(refunded["kept"]) <= stamped
    for sn in stamped:
        await registry_becomes(platform, session, sn, "STAMPED")
    for sn in voided:
        await registry_becomes(platform, session, sn, "VOID")
    assert not voided & set((await quota(platform, buyer))["serials_available"])
    paid = await rows(platform, "payment", "SELECT amount, serials FROM partial_refunds WHERE order_id = $1::uuid",
                      order_id)
    assert sum(p["amount"] for p in paid) == PER_STAMP * len(voided)
    assert sorted(sn for p in paid for sn in p["serials"]) == sorted(voided)
    return "stamped" if stamped and not voided else "refunded" if voided and not stamped else "split"


async def test_a_stamp_in_use_is_stamped_or_refunded_never_both(platform: Platform) -> None:
    outcomes: list[str] = []
    async with aiohttp.ClientSession() as session:
        for start in range(0, ROUNDS, AT_ONCE):
            outcomes += await asyncio.gather(*(race_round(platform, session, n)
                                               for n in range(start, min(ROUNDS, start + AT_ONCE))))
    print(f"race outcomes: {sorted((o, outcomes.count(o)) for o in set(outcomes))}")
    assert len(outcomes) == ROUNDS


async def test_the_platform_invariants_hold_with_refunds(platform: Platform) -> None:
    """After the tests above (run first in this module): the invariants chaos and the rush check,
    refunds included: nothing lost, no serial used twice or both refunded and stamped."""
    urls = {name: platform.settings[name].database_url for name in invariants.SERVICES}

    async def settled() -> dict[str, Any] | None:
        async with invariants.pools_of(urls) as pools:
            data = await invariants.snapshot(pools, amqp_url=None, queues=())
        return data if not invariants.unresolved(data) and not invariants.unsettled(data) else None

    data: dict[str, Any] = await eventually(settled, timeout_s=120, interval_s=0.5, message="every payment settled")
    assert invariants.lost(data)["lost_orders"] == []
    assert invariants.duplicates(data)["total"] == 0
    assert all(not v for v in invariants.refund_violations(data).values()), invariants.refund_violations(data)
    figures = invariants.refunds(data)
    assert figures["requested"] >= 2 and figures["serials_refunded"] >= 3
