"""The purchase path through the running services (real processes, real servers).

account → order → bill → bank token → inquiry → payment → order PAID, and the same path with
the payment and order workers SIGKILLed at the worst moments: the order ends PAID exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from emeterai_shared.testing.fixtures import eventually, fetchval, settings_for
from emeterai_shared.testing.platform import Platform, prepare
from order_service.bootstrap import SERVICE as ORDER
from order_service.config import OrderSettings
from payment_service.bootstrap import SERVICE as PAYMENT
from payment_service.config import PaymentSettings
from payment_service.snap.banksim import BankSimulator, generate_bank_keys, new_bank_config

KILL_AFTER_COMMIT = {"EMETERAI_FAILPOINTS": "consumer.after_commit=kill"}


class Buyer:
    def __init__(self, session: aiohttp.ClientSession, order_url: str):
        self.session = session
        self.url = order_url
        self.token = ""

    async def register(self) -> None:
        async with self.session.post(f"{self.url}/v1/accounts",
                                     json={"name": "Pelamar CASN", "phone": "+6281200000000"}) as r:
            assert r.status == 201, await r.text()
            self.token = (await r.json())["token"]

    async def order(self, quantity: int = 2) -> str:
        async with self.session.post(
            f"{self.url}/v1/orders", json={"quantity": quantity},
            headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": str(uuid.uuid4())},
        ) as r:
            assert r.status == 202, await r.text()
            return str((await r.json())["order_id"])

    async def get(self, order_id: str) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/v1/orders/{order_id}",
                                    headers={"Authorization": f"Bearer {self.token}"}) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body

    async def bill(self, order_id: str) -> dict[str, Any]:
        async def ready() -> dict[str, Any] | None:
            return (await self.get(order_id))["payment"]

        payment: dict[str, Any] = await eventually(ready, timeout_s=60, message=f"bill of {order_id}")
        return payment

    async def status_becomes(self, order_id: str, status: str) -> None:
        async def reached() -> bool:
            return (await self.get(order_id))["status"] == status

        await eventually(reached, timeout_s=90, message=f"order {order_id} {status}")


@pytest.fixture(scope="module")
async def platform(servers: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    tmp = tmp_path_factory.mktemp("purchase")
    private_pem, public_pem = generate_bank_keys()
    bank = new_bank_config(public_pem, partner_service_id="88908")
    (tmp / "banks.json").write_text(json.dumps({"banks": [bank]}))
    (tmp / "bank-private.pem").write_bytes(private_pem)
    order = settings_for(OrderSettings, secrets_dir=str(tmp / "secrets"))
    payment = settings_for(PaymentSettings, secrets_dir=str(tmp / "secrets"),
                           partners_file=str(tmp / "banks.json"))
    await prepare([ORDER, PAYMENT], [order, payment])
    p = Platform(logs=tmp)
    p.add(ORDER, order)
    p.add(PAYMENT, payment)
    p.extras.update(bank=bank, bank_key=private_pem)
    await p.start(("order", "api"), ("order", "worker"), ("order", "relay"))  # creates the keys
    await p.start(("payment", "api"), ("payment", "worker"), ("payment", "relay"))
    try:
        yield p
    finally:
        p.stop()


def bank_for(p: Platform, session: aiohttp.ClientSession) -> BankSimulator:
    extras = p.extras
    return BankSimulator.from_config(p.url("payment"), extras["bank"], extras["bank_key"], session=session)


def customer_no(bank: dict[str, str], virtual_account_no: str) -> str:
    prefix = bank["partner_service_id"]
    assert virtual_account_no.startswith(prefix), (virtual_account_no, prefix)
    return virtual_account_no[len(prefix):]


async def test_full_purchase_path(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id = await buyer.order(2)
        bill = await buyer.bill(order_id)
        assert bill["amount"] == 25_000
        bank = bank_for(platform, session)
        status, body = await bank.get_token()
        assert (status, body["responseCode"]) == (200, "2007300")
        cno = customer_no(platform.extras["bank"], bill["virtual_account_no"])
        status, body = await bank.inquiry(cno)
        assert (status, body["responseCode"]) == (200, "2002400"), body
        assert body["virtualAccountData"]["totalAmount"]["value"] == "25000.00"
        status, body = await bank.pay(cno, 25_000)
        assert (status, body["responseCode"]) == (200, "2002500"), body
        assert body["virtualAccountData"]["paymentFlagStatus"] == "00"
        await buyer.status_becomes(order_id, "PAID")
    order_db = platform.settings["order"]
    assert await fetchval(order_db, "SELECT count(*) FROM outbox WHERE message_type = 'order.paid.v1'"
                          " AND correlation_id = $1", order_id) == 1


async def _paid_exactly_once(platform: Platform, order_id: str) -> None:
    order_db, payment_db = platform.settings["order"], platform.settings["payment"]
    assert await fetchval(order_db, "SELECT count(*) FROM outbox WHERE message_type = 'order.paid.v1'"
                          " AND correlation_id = $1", order_id) == 1
    assert await fetchval(payment_db, "SELECT count(*) FROM outbox WHERE message_type ="
                          " 'payment.captured.v1' AND correlation_id = $1", order_id) == 1
    assert await fetchval(order_db, "SELECT count(*) FROM order_history WHERE order_id = $1"
                          " AND new_status = 'PAID'", uuid.UUID(order_id)) == 1


async def test_sigkill_payment_worker_after_bill_commit(platform: Platform) -> None:
    """The payment worker dies after committing the bill, before acking order.placed."""
    worker = platform.proc("payment", "worker")
    await platform.restart("payment", "worker", extra_env=KILL_AFTER_COMMIT)
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id = await buyer.order(2)
        await eventually(lambda: not worker.alive, timeout_s=60, message="payment worker killed")
        assert worker.popen is not None and worker.popen.returncode == -9
        await platform.start(("payment", "worker"))
        bill = await buyer.bill(order_id)
        bank = bank_for(platform, session)
        cno = customer_no(platform.extras["bank"], bill["virtual_account_no"])
        _, body = await bank.pay(cno, bill["amount"])
        assert body["responseCode"] == "2002500", body
        await buyer.status_becomes(order_id, "PAID")
    payment_db = platform.settings["payment"]
    assert await fetchval(payment_db, "SELECT count(*) FROM outbox WHERE message_type ="
                          " 'payment.bill_issued.v1' AND correlation_id = $1", order_id) == 1
    await _paid_exactly_once(platform, order_id)


async def test_sigkill_order_worker_after_paid_commit(platform: Platform) -> None:
    """The order worker dies after committing PAID (and order.paid), before acking the capture."""
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id = await buyer.order(1)
        bill = await buyer.bill(order_id)
        worker = platform.proc("order", "worker")
        await platform.restart("order", "worker", extra_env=KILL_AFTER_COMMIT)
        bank = bank_for(platform, session)
        cno = customer_no(platform.extras["bank"], bill["virtual_account_no"])
        _, body = await bank.pay(cno, bill["amount"])
        assert body["responseCode"] == "2002500", body
        await eventually(lambda: not worker.alive, timeout_s=60, message="order worker killed")
        assert worker.popen is not None and worker.popen.returncode == -9
        await platform.start(("order", "worker"))
        await buyer.status_becomes(order_id, "PAID")
    await _paid_exactly_once(platform, order_id)


async def test_random_sigkills_during_many_payments(platform: Platform) -> None:
    """30 orders paid while both workers are SIGKILLed and restarted twice: each PAID once."""
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        orders = [await buyer.order(2) for _ in range(30)]
        bills = [await buyer.bill(o) for o in orders]
        bank = bank_for(platform, session)
        bank_cfg = platform.extras["bank"]

        async def pay(bill: dict[str, Any]) -> None:
            await asyncio.sleep(random.uniform(0, 2))
            _, body = await bank.pay(customer_no(bank_cfg, bill["virtual_account_no"]), bill["amount"])
            assert body["responseCode"] == "2002500", body

        payments = asyncio.gather(*(pay(b) for b in bills))
        for _ in range(2):
            await asyncio.sleep(random.uniform(0.2, 1.0))
            platform.proc("order", "worker").kill()
            platform.proc("payment", "worker").kill()
            await platform.start(("order", "worker"), ("payment", "worker"))
        await payments
        for order_id in orders:
            await buyer.status_becomes(order_id, "PAID")
    for order_id in orders:
        await _paid_exactly_once(platform, order_id)
