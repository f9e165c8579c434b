"""A message type reaches every consumer's queue, even a consumer that has never started.

``minting.serials_issued.v1`` has two consumers, order and stamping. When only order's queue
existed, the broker delivered the message there, ``mandatory`` saw nothing wrong, and stamping's
copy was lost for good: its buyer paid, the order showed FULFILLED, and the stamps never reached
the stamping quota. Every process that declares topology now declares the platform's whole
subscription table (``emeterai_shared.messaging.platform_queues``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika
import aiohttp
from emeterai_shared.db import drop_database
from emeterai_shared.messaging.topology import parking_queue
from emeterai_testkit.clients import Buyer
from emeterai_testkit.fixtures import AMQP_URL, eventually, fetchval, settings_for
from emeterai_testkit.platform import KINDS, Platform
from payment_service.adapters.banksim import BankSimulator
from stamping_service.bootstrap import SERVICE as STAMPING
from stamping_service.config import StampingSettings

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]


async def forget_stamping_queues() -> list[str]:
    """The broker as if the stamping service had never been set up: none of its queues exists."""
    queues = [sub.queue for sub in STAMPING.subscriptions]
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for name in queues:
            await channel.queue_delete(name)
            await channel.queue_delete(parking_queue(name))
    finally:
        await connection.close()
    return queues


async def quota(session: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any]:
    async with session.get(f"{url}/v1/quota", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def test_serials_issued_before_stamping_ever_started_are_credited_once_it_starts(
    servers: str, purchase_platform: Any, bank_client: BankFor, va_customer_no: CustomerNo,
    command: Callable[..., Any],
) -> None:
    assert "stamping.on_serials_issued" in await forget_stamping_queues()
    async with purchase_platform(stock=4) as p, aiohttp.ClientSession() as session:
        assert "stamping" not in p.settings  # order, payment and minting only: stamping never ran
        buyer = Buyer(session, p.url("order"))
        await buyer.register()
        order_id = await buyer.order(2)
        bill = await buyer.bill(order_id)
        _, body = await bank_client(p, session).pay(va_customer_no(p, bill["virtual_account_no"]), bill["amount"])
        assert body["responseCode"] == "2002500", body
        serials = (await buyer.status_becomes(order_id, "FULFILLED"))["serials"]
        assert len(serials) == 2
        # minting published the serials (order got its copy) while stamping had never started
        assert await fetchval(p.settings["minting"], "SELECT count(*) FROM outbox WHERE message_type = "
                              "'minting.serials_issued.v1' AND sent_at IS NOT NULL") == 1

        # The stamping service is deployed for the first time: setup (database and topology), then
        # its processes. Its setup declares queues others already declared: the same arguments.
        stamping = settings_for(StampingSettings, secrets_dir=str(p.logs / "secrets"), pdf_workers=1)
        await drop_database(stamping.database_url)
        p.add(STAMPING, stamping)
        await command(p, "stamping", "setup")
        await p.start(*(("stamping", kind) for kind in KINDS))

        async def credited() -> dict[str, Any] | None:
            q = await quota(session, p.url("stamping"), buyer.token)
            return q if set(serials) <= set(q["serials_available"]) else None

        found = await eventually(credited, timeout_s=60, interval_s=0.2,
                                 message=f"serials {serials} in the stamping quota")
        assert sorted(found["serials_available"]) == sorted(serials)
        assert found["available"] == 2
