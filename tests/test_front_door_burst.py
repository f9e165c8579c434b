"""A burst of new orders (or of sign-ins) on an idle platform is served, not shed: past the api process's in-flight
cap, requests wait briefly in a bounded line for a slot (``SlotGate``) instead of getting ``503
busy`` at once (real order and payment processes on the real PostgreSQL and RabbitMQ)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
from emeterai_testkit.clients import Buyer

BURST = 40


async def test_a_burst_past_the_in_flight_cap_waits_for_a_slot_instead_of_being_shed(purchase_platform: Any) -> None:
    # 2 requests in flight per process: without the line, 38 of the 40 would be refused at once.
    # The wait allowed is generous here so the outcome does not depend on this machine's speed;
    # how a line that cannot be served in time is refused is tested in shared/tests/test_admission.py.
    order_settings = {"admission_max_in_flight": 2, "admission_queue_wait_s": 120, "admission_max_queued": 100}
    async with purchase_platform(order_overrides=order_settings) as p, aiohttp.ClientSession() as session:
        buyers = [Buyer(session, p.url("order")) for _ in range(BURST)]
        await asyncio.gather(*(b.register(phone=f"+62812{n:08d}") for n, b in enumerate(buyers)))

        async def place(buyer: Buyer) -> int:
            async with session.post(f"{p.url('order')}/v1/orders", json={"quantity": 1},
                                    headers={**buyer.auth, "Idempotency-Key": str(uuid.uuid4())}) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(place(b) for b in buyers))
        assert statuses == [202] * BURST, sorted(set(statuses))


async def test_a_burst_of_sign_ins_on_an_idle_platform_is_served_not_paced(purchase_platform: Any) -> None:
    """Sign-in codes open new sessions, which the order api paces while its slots are full
    (``admission.Newcomers``); by default the pace's burst is what the slots and their line hold,
    so 40 applicants asking for a code at the same moment on an idle platform all get one."""
    order_settings = {"admission_max_in_flight": 2, "admission_queue_wait_s": 120, "admission_max_queued": 100,
                      "otp_client_limit": 0}  # one test client address for all of them
    async with purchase_platform(order_overrides=order_settings) as p, aiohttp.ClientSession() as session:
        async def ask(n: int) -> int:
            async with session.post(f"{p.url('order')}/v1/auth/otp", json={"phone": f"+62813{n:08d}"}) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(ask(n) for n in range(BURST)))
        assert statuses == [202] * BURST, sorted(set(statuses))
