"""A QRIS acquirer outage end to end: the acquirer simulator (a real HTTP server) stops answering,
the payment worker's circuit breaker opens, the order service learns it from
``payment.acquirer_state.v1`` (never by calling the payment service) and sheds new QRIS orders
with 503 ``qris_unavailable`` while virtual-account orders go on; the acquirer comes back, the
breaker's probe closes it, QRIS orders are taken again, and every QRIS payment made meanwhile ends
credited or refunded, once. The breaker's threshold and cool-down are small by settings; nothing
here depends on timing but through ``eventually``."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from emeterai_testkit.clients import Buyer
from emeterai_testkit.fixtures import eventually, fetchval, free_port
from emeterai_testkit.platform import Platform
from emeterai_testkit.qris import captures, partner_reference_of
from payment_service.adapters.acquirersim import AcquirerSimulator, new_acquirer_entry

DEADLINE_S = 180


@dataclass
class Outage:
    platform: Platform
    sim: AcquirerSimulator
    port: int
    runner: web.AppRunner | None

    async def down(self) -> None:
        """The acquirer stops answering: its server is gone (connections refused); what it knows
        (its QRs, payments made at it) stays."""
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None

    async def up(self) -> None:
        self.runner = await self.sim.start(self.port)


@pytest.fixture(scope="module")
async def outage(purchase_platform: Any) -> AsyncIterator[Outage]:
    port = free_port()
    entry, sim_key = new_acquirer_entry(f"http://127.0.0.1:{port}/snap")
    sim = AcquirerSimulator(entry, sim_key)
    o = Outage(None, sim, port, await sim.start(port))  # type: ignore[arg-type]
    try:
        async with purchase_platform(stock=20, qris_interval_s=0.2, acquirer_timeout_s=2.0, acquirer_attempts=2,
                                     acquirer_breaker_threshold=2, acquirer_breaker_cool_down_s=1.0) as p:
            # the platform's bank and the acquirer in one partners file: VA and QRIS side by side
            partners_file = Path(p.settings["payment"].partners_file)
            partners = json.loads(partners_file.read_text())
            partners["acquirers"] = [entry]
            partners_file.write_text(json.dumps(partners))
            await p.restart("payment", "api")
            await p.restart("payment", "worker")
            sim.merchant_url = p.url("payment")
            o.platform = p
            yield o
    finally:
        if o.runner is not None:
            await o.runner.cleanup()


async def set_bill(o: Outage, order_id: str, assignment: str) -> None:
    await fetchval(o.platform.settings["payment"], f"UPDATE bills SET {assignment} WHERE order_id = $1::uuid"
                   " RETURNING 1", order_id)


async def qris_state(session: aiohttp.ClientSession, o: Outage) -> dict[str, Any]:
    """GET /v1/pricing's word on QRIS (``available``, ``retry_at``); VA is always available."""
    async with session.get(f"{o.platform.url('order')}/v1/pricing") as resp:
        assert resp.status == 200
        methods = {m["method"]: m for m in (await resp.json())["payment_methods"]}
    assert methods["va"]["available"] is True
    return dict(methods["qris"])


async def qris_available(session: aiohttp.ClientSession, o: Outage) -> bool:
    return bool((await qris_state(session, o))["available"])


async def qris_unavailable(session: aiohttp.ClientSession, o: Outage) -> bool:
    return not await qris_available(session, o)


async def post_qris(session: aiohttp.ClientSession, o: Outage, buyer: Buyer,
                    key: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One raw POST /v1/orders by QRIS (the testkit's Buyer waits a 503 out; this does not)."""
    async with session.post(f"{o.platform.url('order')}/v1/orders", json={"quantity": 1, "payment_method": "qris"},
                            headers={**buyer.auth, "Idempotency-Key": key}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def qris_order(session: aiohttp.ClientSession, o: Outage) -> tuple[Buyer, str]:
    buyer = Buyer(session, o.platform.url("order"), timeout_s=DEADLINE_S)
    await buyer.register()
    return buyer, await buyer.order(1, payment_method="qris")


async def test_an_acquirer_outage_sheds_qris_orders_and_loses_no_payment(outage: Outage) -> None:
    o, payment_db = outage, outage.platform.settings["payment"]
    async with aiohttp.ClientSession() as session:
        assert await qris_available(session, o)
        # before the outage: A (to be paid while the acquirer is unreachable, its notify lost),
        # B (paid once it is back), F (paid, its notify lost, and due to expire meanwhile),
        # G (expired unpaid now, paid late during the outage: refunded once it is back)
        orders = {name: await qris_order(session, o) for name in "ABFG"}
        for buyer, order_id in orders.values():
            await buyer.bill(order_id, timeout_s=DEADLINE_S)
        prn = {name: await partner_reference_of(o.platform, order_id) for name, (_, order_id) in orders.items()}
        buyer_g, order_g = orders["G"]
        await set_bill(o, order_g, "expires_at = now() - interval '1 second'")
        await buyer_g.status_becomes(order_g, "EXPIRED", timeout_s=DEADLINE_S)
        for name in "ABF":  # no routine query yet: the outage's first failed calls are D's below
            await set_bill(o, orders[name][1], "qr_next_query_at = now() + interval '1 hour'")

        await o.down()
        # D is taken before the breaker opens: its QR waits for the acquirer (the generation fails,
        # with backoff; those failures open the breaker)
        buyer_d, order_d = await qris_order(session, o)
        await eventually(lambda: qris_unavailable(session, o), timeout_s=DEADLINE_S,
                         message="the order service learns the acquirer is unavailable")

        # new QRIS orders: 503 qris_unavailable with Retry-After, nothing kept (the key works later)
        buyer_h = Buyer(session, o.platform.url("order"), timeout_s=DEADLINE_S)
        await buyer_h.register()
        key_h = str(uuid.uuid4())
        status, body, headers = await post_qris(session, o, buyer_h, key_h)
        assert status == 503, body
        error = body["error"]
        assert error["code"] == "qris_unavailable" and "virtual account" in error["message"], error
        assert int(headers["Retry-After"]) == error["retry_after_s"] >= 1 and error["retry_at"]

        # after the cool-down the worker's probe finds the acquirer still down: the breaker opens
        # again and the front door learns the later time
        first = await qris_state(session, o)

        async def reopened() -> bool:
            state = await qris_state(session, o)
            return not state["available"] and state["retry_at"] > first["retry_at"]

        await eventually(reopened, timeout_s=DEADLINE_S, message="a failed probe reopens the breaker")

        # the money side of the outage: A and F paid at the acquirer (notifies lost), F due to expire,
        # G's late payment notified (our side is up): captured late, its refund must wait for the acquirer
        o.sim.mark_paid(prn["A"])
        o.sim.mark_paid(prn["F"])
        await set_bill(o, orders["F"][1], "expires_at = now() - interval '1 second'")
        assert [(s, b["responseCode"]) for s, b in await o.sim.pay(prn["G"])] == [(200, "2005200")]
        for name in "AB":
            await set_bill(o, orders[name][1], "qr_next_query_at = now()")

        # a virtual-account order is paid and fulfilled meanwhile
        buyer_va = Buyer(session, o.platform.url("order"), timeout_s=DEADLINE_S)
        await buyer_va.register()
        order_va = await buyer_va.paid_order(1, o.platform.simulator(session), o.platform.customer_no)
        await buyer_va.status_becomes(order_va, "FULFILLED", timeout_s=DEADLINE_S)

        # D waits honestly: no QR, awaiting payment (no money can be taken without a QR)
        view_d = await buyer_d.get(order_d)
        assert (view_d["status"], view_d["payment"]) == ("AWAITING_PAYMENT", None)
        assert await fetchval(payment_db, "SELECT count(*) FROM qris_refunds WHERE status = 'DONE'") == 0

        await o.up()
        await eventually(lambda: qris_available(session, o), timeout_s=DEADLINE_S,
                         message="the breaker's probe closes it; the order service takes QRIS again")
        status, body, _ = await post_qris(session, o, buyer_h, key_h)  # the same request, now taken
        assert status == 202, body
        order_h = body["order_id"]

        # D's QR is generated now, once; D, B and H are paid with their notifies
        await buyer_d.bill(order_d, timeout_s=DEADLINE_S)
        prn["D"] = await partner_reference_of(o.platform, order_d)
        await buyer_h.bill(order_h, timeout_s=DEADLINE_S)
        prn["H"] = await partner_reference_of(o.platform, order_h)
        for name in "BDH":
            assert [(s, b["responseCode"]) for s, b in await o.sim.pay(prn[name])] == [(200, "2005200")]

        buyers = {name: buyer for name, (buyer, _) in orders.items()} | {"D": buyer_d, "H": buyer_h}
        ids = {name: order_id for name, (_, order_id) in orders.items()} | {"D": order_d, "H": order_h}
        for name in "ABDFH":  # A by query, F by the expiry's last query, B, D, H by notify
            await buyers[name].status_becomes(ids[name], "FULFILLED", timeout_s=DEADLINE_S)
        await buyer_g.status_becomes(order_g, "REFUNDED", timeout_s=DEADLINE_S)

        async def g_refunded_at_the_acquirer() -> bool:
            return bool(await fetchval(payment_db, "SELECT r.status = 'DONE' FROM qris_refunds r JOIN bills b"
                                       " USING (bill_id) WHERE b.order_id = $1::uuid", order_g))

        await eventually(g_refunded_at_the_acquirer, timeout_s=DEADLINE_S, message="G's QRIS refund done")

    # none lost, none twice: one capture per paid QR, one QR per bill, one refund at the acquirer
    for name, order_id in ids.items():
        assert await captures(o.platform, order_id) == 1, name
        assert [q for q in o.sim.qrs.values() if q.partner_reference_no == prn[name]] == [o.sim.qrs[prn[name]]]
    assert len(o.sim.qrs[prn["G"]].refunds) == 1
    assert await fetchval(payment_db, "SELECT count(*) FROM refunds WHERE order_id = $1::uuid", order_g) == 1
    assert await captures(o.platform, order_va) == 1

