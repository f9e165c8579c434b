"""Round trips to PostgreSQL on the payment service's hot paths, counted on a real connection.

A credited order's cost is mostly SQL round trips (each ~120 us of client CPU plus ~80 us of the
server's), so these tests pin how many statements a path sends, BEGIN and COMMIT included: a
change that adds one fails here and has to say why. Counted with asyncpg's query logger on the
only connection of a pool, after a first run of the same path (asyncpg prepares a statement, and
introspects its types, once per connection).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import uuid4

from emeterai_shared.contracts.events import OrderPlaced
from emeterai_shared.uow import UnitOfWork, unit_of_work
from emeterai_testkit.roundtrips import counting_pool, logged
from payment_service.adapters.acquirers import Acquirer
from payment_service.adapters.acquirersim import new_acquirer_entry
from payment_service.adapters.banks import BankRegistry
from payment_service.adapters.snap import PAYMENT_PATH
from payment_service.adapters.snap.models import validate_qr_notify
from payment_service.service_layer import qris
from payment_service.service_layer.billing import issue_bill

if TYPE_CHECKING:
    from conftest import Payment

VA_PAYMENT = 4
"""BEGIN, claim X-EXTERNAL-ID + lock the bill + payments seen, capture + answer + outbox, COMMIT
(the token is known to the api process). Was 11, then 6."""
VA_PAYMENT_REPLAY = 4
"""BEGIN, claim X-EXTERNAL-ID (taken), the first answer, COMMIT. Was 5."""
INQUIRY = 1
"""The bill (no transaction: it only reads). Was 4."""
ACCESS_TOKEN = 1
"""The token's INSERT (no transaction around one statement). Was 3."""
QR_NOTIFY = 5
"""BEGIN, lock the bill (with its QR reference and whether it is captured), record the notify,
capture + outbox, COMMIT; the api adds one for a token it has not seen. Was 10 (+ the token)."""
ISSUE_VA_BILL = 1
"""The bill with its bill.issued.v1 in one INSERT (the consumer adds its inbox claim, BEGIN and
COMMIT, shared by a batch). Was 3."""


def show(name: str, statements: list[str]) -> None:
    print(f"{name}: {len(statements)}")
    for q in statements:
        print("   ", " ".join(q.split())[:140])


def cno_of(bill: dict[str, object], partner_service_id: str) -> str:
    return str(bill["virtual_account_no"])[len(partner_service_id):]


async def test_bank_callbacks_round_trips(payment: Payment) -> None:
    warm_up, bill = await payment.place_order(), await payment.place_order()
    async with counting_pool(payment.settings.database_url) as (pool, statements), payment.api(pool) as base_url, \
            payment.bank(base_url=base_url) as bank:
        await bank.get_token()
        await logged(statements)
        await bank.get_token()
        token = await logged(statements)
        assert (await bank.inquiry(cno_of(warm_up, bank.partner_service_id)))[1]["responseCode"] == "2002400"
        assert (await bank.pay(cno_of(warm_up, bank.partner_service_id), 12_500))[1]["responseCode"] == "2002500"
        await logged(statements)

        assert (await bank.inquiry(cno_of(bill, bank.partner_service_id)))[1]["responseCode"] == "2002400"
        inquiry = await logged(statements)
        request = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(cno_of(bill, bank.partner_service_id),
                                                                            12_500), access_token=bank.access_token)
        status, body = await bank.send(request)
        assert (status, body["responseCode"]) == (200, "2002500")
        captured = await logged(statements)
        status, body = await bank.send(request)  # the same request again: answered as before
        assert (status, body["responseCode"]) == (404, "4042518")
        replayed = await logged(statements)
    for name, sent in (("token", token), ("inquiry", inquiry), ("payment", captured), ("replay", replayed)):
        show(name, sent)
    assert len(token) <= ACCESS_TOKEN
    assert len(inquiry) <= INQUIRY
    assert len(captured) <= VA_PAYMENT
    assert len(replayed) <= VA_PAYMENT_REPLAY
    assert await payment.pool.fetchval("SELECT count(*) FROM payments WHERE bill_id = $1", bill["bill_id"]) == 1


async def qris_bill(payment: Payment, acquirer: Acquirer) -> tuple[str, str]:
    """A VA bill made a QRIS bill of ``acquirer`` with a generated QR: (partnerReferenceNo, referenceNo)."""
    bill = await payment.place_order()
    partner_reference_no, reference_no = f"EM{uuid4().hex}", f"{uuid4().int % 10**12:012d}"
    await payment.pool.execute(
        """UPDATE bills SET method = 'qris', bank = $2, partner_reference_no = $3, qr_reference_no = $4,
                            qr_content = 'QR' WHERE bill_id = $1""",
        bill["bill_id"], acquirer.acquirer_id, partner_reference_no, reference_no)
    return partner_reference_no, reference_no


async def test_qr_notify_round_trips(payment: Payment) -> None:
    acquirer = Acquirer.of(new_acquirer_entry("http://127.0.0.1:9/snap", acquirer_id=f"acq-{uuid4().hex[:6]}")[0])
    bills = [await qris_bill(payment, acquirer) for _ in range(2)]
    async with counting_pool(payment.settings.database_url) as (pool, statements):
        for partner_reference_no, reference_no in bills:
            raw = json.dumps({"originalReferenceNo": reference_no, "originalPartnerReferenceNo": partner_reference_no,
                              "latestTransactionStatus": "00", "transactionStatusDesc": "Success",
                              "amount": {"value": "12500.00", "currency": "IDR"},
                              "additionalInfo": {"rrn": "123456789012"}}).encode()
            async with unit_of_work(pool) as uow:
                answer = await qris.notify(uow, acquirer, validate_qr_notify(raw), json.loads(raw), datetime.now(UTC))
            assert answer == (qris.Case.SUCCESS, True)
            notified = await logged(statements)  # the second bill's: counted with every statement prepared
    show("qr notify", notified)
    assert len(notified) <= QR_NOTIFY


async def test_issue_va_bill_round_trips(payment: Payment) -> None:
    banks = BankRegistry.load(Path(payment.settings.partners_file))
    async with counting_pool(payment.settings.database_url) as (pool, statements), pool.acquire() as conn:
        for _ in range(2):
            order = OrderPlaced(order_id=uuid4(), account_id=uuid4(), quantity=1, amount=12_500, bank=None,
                                placed_at=datetime.now(UTC))
            async with conn.transaction():
                await logged(statements)  # BEGIN: the consumer's, shared by a batch
                uow = UnitOfWork(conn)
                await issue_bill(uow, banks, order, timedelta(minutes=30), datetime.now(UTC))
                await uow.flush()
                issued = await logged(statements)
        async with conn.transaction():  # the same order again: nothing more
            uow = UnitOfWork(conn)
            await issue_bill(uow, banks, order, timedelta(minutes=30), datetime.now(UTC))
            await uow.flush()
    show("issue bill", issued)
    assert len(issued) <= ISSUE_VA_BILL
    assert [e.order_id for e in await payment.events("payment.bill_issued.v1", order.order_id)] == [order.order_id]
