"""The rush's QRIS share (``bench.rush``) on a real platform: an applicant orders by QRIS while the
acquirer simulator (a real HTTP server, in the partners file beside a VA bank) is down, so its
QR comes late (or its order is answered ``503 qris_unavailable`` and it falls back to VA); once
the acquirer is back it pays at ``/sim/pay`` and is credited. The rush's invariants then count the
QRIS payment apart (``invariants.lost``'s ``by_method``), read from the real databases."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from emeterai_testkit import invariants
from emeterai_testkit.clients import Bank, Client, Stats
from emeterai_testkit.fixtures import eventually, free_port
from emeterai_testkit.platform import DevBank, Platform, new_bank
from payment_service.adapters.acquirersim import AcquirerSimulator, new_acquirer_entry

from bench.rush.applicants import Applicant, Script
from bench.rush.platform import RushAcquirer


@dataclass
class World:
    platform: Platform
    acquirer: RushAcquirer
    bank: DevBank


@pytest.fixture(scope="module")
async def world(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    port = free_port()
    entry, sim_key = new_acquirer_entry(f"http://127.0.0.1:{port}/snap")
    acquirer = RushAcquirer(f"http://127.0.0.1:{port}", sim=AcquirerSimulator(entry, sim_key), port=port)
    await acquirer.start()
    tmp = tmp_path_factory.mktemp("rush-qris")
    bank = new_bank(tmp)
    partners = tmp / "partners.json"
    partners.write_text(json.dumps({"banks": [bank.config], "acquirers": [entry]}))
    try:
        async with purchase_platform(stock=20, stamping=True, partners_file=str(partners), qris_interval_s=0.2,
                                     acquirer_timeout_s=2.0) as p:
            acquirer.sim.merchant_url = p.url("payment")
            yield World(p, acquirer, bank)
    finally:
        await acquirer.stop()


def script(w: World, session: aiohttp.ClientSession) -> Script:
    deadline = time.monotonic() + 300
    client = Client(session, w.platform.urls(), stats=Stats(), deadline=deadline)
    payer = Client(session, {"acquirer": str(w.acquirer.url)}, stats=Stats(), deadline=deadline,
                   transport_retries=None)
    return Script(client, Bank(client, w.bank.simulator(w.platform.url("payment"), session)), [], 20.0,
                  acquirer=payer, qris_fallback_after=1)


async def test_a_rush_applicant_pays_by_qris_across_an_acquirer_outage(world: World) -> None:
    async with aiohttp.ClientSession() as session:
        s = script(world, session)
        a = Applicant(0, "t", "duplicate", method="qris", wanted_qris=True)
        await world.acquirer.stop()  # connection refused
        buying = asyncio.create_task(s.buy(a))
        try:
            await eventually(lambda: bool(a.order_id) or a.fell_back or buying.done(), timeout_s=60,
                             message="the QRIS order answered (queued) or refused (fall back to VA)")
            await asyncio.sleep(1.0)  # the worker meets the acquirer down at least once
            assert a.billed_at is None or a.method == "va", "a QR without an acquirer"
        finally:
            back = time.monotonic()
            await world.acquirer.start()
        await asyncio.wait_for(buying, 240)
    assert a.failure is None and a.fulfilled, a.failure
    if a.method == "qris":  # queued: the QR came once the acquirer was back, then paid and credited
        assert a.billed_at is not None and a.billed_at >= back
        assert world.acquirer.paid_references() != []
    else:  # refused 503 qris_unavailable (a circuit breaker): paid by VA instead
        assert a.fell_back and a.qris_unavailable == 1


async def test_the_rush_invariants_count_qris_payments_apart(world: World) -> None:
    urls = {name: world.platform.settings[name].database_url for name in invariants.SERVICES}

    async def settled() -> dict[str, Any] | None:
        async with invariants.pools_of(urls) as opened:
            data = await invariants.snapshot(opened, amqp_url=None, queues=())
        return data if not invariants.unresolved(data) else None

    data: dict[str, Any] = await eventually(settled, timeout_s=120, interval_s=0.5, message="payments settled")
    money = invariants.lost(data)
    by_method = money["by_method"]
    assert money["lost_orders"] == []
    assert sum(m["captured"] for m in by_method.values()) == money["captured"] >= 1
    for method, figures in by_method.items():
        assert figures["lost"] == 0 and figures["captured"] == figures["credited"] + figures["refunded"], method
    paid_qris = len(world.acquirer.paid_references())
    assert by_method.get("qris", {}).get("captured", 0) == paid_qris
