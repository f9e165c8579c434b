"""QRIS (SNAP QR MPM) use cases: generating the QR of a QRIS bill, and the acquirer's notify.

The bill and its ``partnerReferenceNo`` are stored when the order is placed (``billing.issue_bill``);
the worker's job `generate_qrs` then asks the acquirer for the QR, outside any buyer's request and
outside any transaction. A retried or repeated generation cannot make a second QR: the acquirer
answers ``4094701`` for a ``partnerReferenceNo`` it already generated, and we query it instead.
The QR reaches the order through ``payment.bill_issued.v1`` (``method`` ``qris``, ``qr_content``).

Each acquirer's calls pass its circuit breaker (``adapters.acquirers``): while it is open they fail at
once as `AcquirerUnavailable` and every job keeps its own backoff (a QR is generated, a payment
queried, a refund sent when the acquirer is back). `watch_acquirers` probes an open breaker whose
cool-down is over and publishes ``payment.acquirer_state.v1`` when an acquirer's availability
changes, for the order service to shed new QRIS orders meanwhile.

A notify with status ``00`` captures through the same ``payment.captured.v1`` as a VA payment
(``method`` ``qris``, ``reference_no`` the RRN, else the acquirer's reference), exactly once.

Refunds of QRIS payments, a whole order's and a buyer's partial ones alike, go back through
``qr-mpm-refund`` with a ``partnerRefundNo`` of their own (`record_qris_refund`, `refund_qrs`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
from emeterai_shared.contracts.events import (
    AcquirerStateChanged,
    BillExpired,
    BillFailed,
    BillIssued,
    PartialRefundPaidOut,
    PaymentCaptured,
    PaymentRefundSettled,
)
from emeterai_shared.uow import UnitOfWork, unit_of_work

from payment_service.adapters.acquirers import (
    Acquirer,
    AcquirerClients,
    AcquirerRefused,
    AcquirerRegistry,
    AcquirerUnavailable,
)
from payment_service.adapters.breaker import BreakerState
from payment_service.adapters.partial_refunds import PartialRefundRepository
from payment_service.adapters.qris_store import QrisStore, QrRefund, QrToGenerate, QrToQuery
from payment_service.adapters.repository import NewPayment, PaymentRepository
from payment_service.adapters.snap import QR_CANCEL, QR_GENERATE, QR_QUERY, QR_REFUND
from payment_service.adapters.snap.codes import Case
from payment_service.adapters.snap.models import QrNotifyRequest
from payment_service.adapters.snap.signatures import format_snap_timestamp, parse_snap_timestamp
from payment_service.domain.model import Bill, BillStatus

log = logging.getLogger(__name__)

GENERATE_BATCH = 20
GENERATE_ROUNDS = 10
QUERY_BATCH = 50
GENERATED = "2004700"
DUPLICATE = "4094701"
QUERIED = "2005100"
REFUNDED = "2007800"
MAX_RETRY_DELAY_S = 60.0


def _amount(rupiah: int) -> dict[str, str]:
    return {"value": f"{rupiah}.00", "currency": "IDR"}


@dataclass(frozen=True)
class GeneratedQr:
    reference_no: str
    qr_content: str


async def query_qr(clients: AcquirerClients, acquirer: Acquirer, partner_reference_no: str,
                   reference_no: str | None = None) -> dict[str, object]:
    """qr-mpm-query (service 51) of one of our QRs: the acquirer's answer."""
    payload: dict[str, object] = {"originalPartnerReferenceNo": partner_reference_no, "serviceCode": "47",
                                  "merchantId": acquirer.merchant_id}
    if reference_no:
        payload["originalReferenceNo"] = reference_no
    return await clients.client(acquirer).call(QR_QUERY, payload)


async def _generate(clients: AcquirerClients, acquirer: Acquirer, qr: QrToGenerate) -> GeneratedQr:
    body = await clients.client(acquirer).call(QR_GENERATE, {
        "partnerReferenceNo": qr.partner_reference_no, "amount": _amount(qr.amount),
        "merchantId": acquirer.merchant_id, "validityPeriod": format_snap_timestamp(qr.expires_at)})
    code = str(body.get("responseCode"))
    if code == DUPLICATE:  # generated before (an answer we lost): ask for it instead of generating anew
        body = await query_qr(clients, acquirer, qr.partner_reference_no)
        code = str(body.get("responseCode"))
        if code != QUERIED or not body.get("qrContent"):
            raise AcquirerRefused(code, body)
        return GeneratedQr(str(body["originalReferenceNo"]), str(body["qrContent"]))
    if code != GENERATED or not body.get("qrContent") or not body.get("referenceNo"):
        raise AcquirerRefused(code, body)
    return GeneratedQr(str(body["referenceNo"]), str(body["qrContent"]))


async def _generate_one(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients,
                        qr: QrToGenerate, now: datetime, first_query_s: float) -> bool:
    acquirer = acquirers.get(qr.acquirer)
    try:
        if acquirer is None:
            raise AcquirerRefused("unknown", {"responseMessage": f"acquirer {qr.acquirer!r} is not configured"})
        generated = await _generate(clients, acquirer, qr)
    except AcquirerUnavailable as exc:  # retried already; try again in a later round, with backoff
        delay = min(MAX_RETRY_DELAY_S, 2.0 ** qr.attempts)
        log.warning("QR of bill %s not generated (%s): next attempt in %.0f s", qr.bill_id, exc, delay)
        async with unit_of_work(pool) as uow:
            await QrisStore(uow.conn).postpone(qr.bill_id, now + timedelta(seconds=delay))
        return False
    except AcquirerRefused as exc:
        log.error("QR of bill %s refused: %s", qr.bill_id, exc)
        async with unit_of_work(pool) as uow:
            await _fail(uow, qr.bill_id, f"the QRIS acquirer refused the QR: {exc}")
        return False
    async with pool.acquire() as conn:  # one statement: the QR and its bill.issued.v1, or nothing
        announce = UnitOfWork(conn)
        announce.publish(BillIssued(order_id=qr.order_id, bill_id=qr.bill_id, bank=qr.acquirer, virtual_account_no="",
                                    amount=qr.amount, expires_at=qr.expires_at, method="qris",
                                    qr_content=generated.qr_content), correlation_id=str(qr.order_id))
        return await QrisStore(conn).set_qr(qr.bill_id, generated.reference_no, generated.qr_content, now,
                                            now + timedelta(seconds=first_query_s), announce)


async def _fail(uow: UnitOfWork, bill_id: UUID, reason: str) -> None:
    repo = PaymentRepository(uow.conn)
    bill = await repo.bill_by_id(bill_id, lock=True)
    if bill is None or bill.status is not BillStatus.OPEN:
        return
    bill.expire()
    await repo.save_expired([bill], datetime.now(UTC))
    uow.publish(BillFailed(order_id=bill.order_id, reason=reason), correlation_id=str(bill.order_id))


async def generate_qrs(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients,
                       now: datetime, first_query_s: float = 2.0) -> int:
    """The worker's job: generate the QRs of new QRIS bills, batch after batch while batches come
    full (at most ``GENERATE_ROUNDS``: a burst of QRIS orders is not held to one batch per run);
    returns how many were generated. Every bill of a batch leaves the selection: its QR is set, or
    it is postponed (acquirer unreachable) or failed (refused)."""
    generated = 0
    for _ in range(GENERATE_ROUNDS):
        async with pool.acquire() as conn:  # one read: no transaction
            pending = await QrisStore(conn).to_generate(now, GENERATE_BATCH)
        if not pending:
            break
        done = await asyncio.gather(*(_generate_one(pool, acquirers, clients, qr, now, first_query_s)
                                      for qr in pending))
        generated += sum(done)
        if len(pending) < GENERATE_BATCH:
            break
    return generated


def _paid_time(value: object) -> datetime | None:
    try:
        return parse_snap_timestamp(str(value)) if value else None
    except ValueError:
        return None


async def _query_one(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients, qr: QrToQuery,
                     now: datetime, first_s: float, max_s: float) -> bool:
    acquirer = acquirers.get(qr.acquirer)
    delay = min(max_s, first_s * 1.5 ** (qr.queries + 1))
    body: dict[str, object] = {}
    if acquirer is not None:
        try:
            body = await query_qr(clients, acquirer, qr.partner_reference_no, qr.reference_no)
        except (AcquirerUnavailable, AcquirerRefused) as exc:
            log.warning("query of QR bill %s failed: %s", qr.bill_id, exc)
    if acquirer is not None and body.get("responseCode") == QUERIED and body.get("latestTransactionStatus") == "00":
        async with unit_of_work(pool) as uow:
            if await _capture_queried(uow, acquirer, qr, body, now):
                return True
            await QrisStore(uow.conn).next_query(qr.bill_id, now + timedelta(seconds=delay))
        return False
    async with pool.acquire() as conn:  # not paid yet (the usual answer): one UPDATE, no transaction
        await QrisStore(conn).next_query(qr.bill_id, now + timedelta(seconds=delay))
    return False


async def _capture_queried(uow: UnitOfWork, acquirer: Acquirer, qr: QrToQuery, body: dict[str, object],
                           now: datetime) -> bool:
    """A query found the QR paid (its notify lost or late): capture it, once, if the amount is the bill's."""
    bill = await PaymentRepository(uow.conn).bill_by_id(qr.bill_id, lock=True)
    if bill is None:
        return False
    amount = body.get("amount")
    value = amount.get("value") if isinstance(amount, dict) else None
    if value != f"{bill.amount}.00":
        log.error("QR bill %s: the acquirer reports %r paid, the bill is %s", qr.bill_id, amount, bill.amount)
        return False
    info = body.get("additionalInfo")
    rrn = str(info["rrn"]) if isinstance(info, dict) and info.get("rrn") else None
    reference_no = str(body.get("originalReferenceNo") or qr.reference_no)
    captured = await capture_qris(uow, acquirer, bill, reference_no, rrn, _paid_time(body.get("paidTime")), now)
    if captured:
        log.info("QR bill %s captured by query (no notify arrived)", qr.bill_id)
    return captured or bill.status is not BillStatus.OPEN


async def query_pending_qrs(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients,
                            now: datetime, first_s: float, max_s: float) -> int:
    """The worker's job: query the pending QRs that are due (backoff x1.5 from ``first_s`` up to
    ``max_s``), capturing those paid whose notify never came; returns how many it captured."""
    async with pool.acquire() as conn:  # one read: no transaction
        due = await QrisStore(conn).to_query(now, QUERY_BATCH)
    if not due:
        return 0
    done = await asyncio.gather(*(_query_one(pool, acquirers, clients, qr, now, first_s, max_s) for qr in due))
    return sum(done)


async def capture_qris(uow: UnitOfWork, acquirer: Acquirer, bill: Bill, reference_no: str, rrn: str | None,
                       paid_time: datetime | None, now: datetime, *, already_captured: bool | None = None) -> bool:
    """Capture the QRIS payment of ``bill`` (locked by the caller): once, through
    ``payment.captured.v1`` as for a VA payment. False when captured already.

    A payment reported after the bill expired is captured ``late``, as a VA late advice is: the order
    service refunds it (``order.refund_requested.v1``), and the refund of a QRIS payment goes back
    through ``qr-mpm-refund`` (`record_qris_refund`). ``already_captured``: whether the caller
    found a payment captured for the bill when it locked it (None: look it up here)."""
    repo = PaymentRepository(uow.conn)
    if already_captured is None:
        already_captured = await repo.captured_for_bill(bill.bill_id) is not None
    if already_captured or bill.status is BillStatus.PAID:
        return False
    late = bill.status is BillStatus.EXPIRED
    bill.pay(late=late)
    payment = NewPayment(uuid4(), bill, acquirer.acquirer_id, reference_no, bill.amount, None, rrn or reference_no,
                         paid_time, late, now)
    uow.publish(PaymentCaptured(order_id=bill.order_id, bill_id=bill.bill_id, payment_id=payment.payment_id,
                                amount=payment.amount, bank=acquirer.acquirer_id,
                                payment_request_id=reference_no, captured_at=now, late=late, method="qris",
                                reference_no=rrn or reference_no, **bill.buyer()),
                correlation_id=str(bill.order_id), trace_headers=bill.trace_context or None)
    await repo.record_capture(uow, payment)  # with payment.captured.v1: one statement
    return True


async def notify(uow: UnitOfWork, acquirer: Acquirer, request: QrNotifyRequest, raw_body: dict[str, object],
                 now: datetime) -> tuple[Case, bool]:
    """An authenticated, well-formed qr-mpm-notify: (the answer's case, whether it captured)."""
    store, repo = QrisStore(uow.conn), PaymentRepository(uow.conn)
    found = await repo.qris_bill_to_notify(request.original_partner_reference_no, acquirer.acquirer_id)
    if found is None:
        return Case.TRANSACTION_NOT_FOUND, False
    bill, known_reference = found.bill, found.qr_reference_no
    if known_reference is not None and known_reference != request.original_reference_no:
        return Case.TRANSACTION_NOT_FOUND, False
    try:
        amount: int | None = request.amount.to_rupiah()
    except ValueError:
        amount = None
    if amount != bill.amount:
        return Case.INVALID_AMOUNT, False
    if not await store.record_notification(acquirer.acquirer_id, request.original_reference_no,
                                           request.latest_transaction_status, request.original_partner_reference_no,
                                           bill.bill_id, amount, request.rrn, raw_body):
        return Case.SUCCESS, False  # the same notify again: stored already, nothing more
    if request.latest_transaction_status != "00":
        log.info("QRIS bill %s: status %s recorded", bill.bill_id, request.latest_transaction_status)
        return Case.SUCCESS, False
    captured = await capture_qris(uow, acquirer, bill, request.original_reference_no, request.rrn, None, now,
                                  already_captured=found.captured)
    return Case.SUCCESS, captured


async def _expire_one(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients, qr: QrToQuery,
                      now: datetime, max_s: float) -> bool:
    """Cancel the QR (qr-mpm-cancel), query it once more, then capture it (paid in time after all) or
    expire the bill. While the acquirer cannot be reached the bill stays open and is tried again."""
    acquirer = acquirers.get(qr.acquirer)
    body: dict[str, object] = {}
    if acquirer is not None and qr.reference_no:
        try:
            await clients.client(acquirer).call(QR_CANCEL, {
                "originalPartnerReferenceNo": qr.partner_reference_no, "originalReferenceNo": qr.reference_no,
                "merchantId": acquirer.merchant_id, "reason": "expired"})
            body = await query_qr(clients, acquirer, qr.partner_reference_no, qr.reference_no)
        except (AcquirerUnavailable, AcquirerRefused) as exc:
            log.warning("QR bill %s due to expire, the acquirer cannot say (%s): tried again later", qr.bill_id, exc)
            async with unit_of_work(pool) as uow:
                await QrisStore(uow.conn).retry_expiry(qr.bill_id, now + timedelta(seconds=max_s))
            return False
    async with unit_of_work(pool) as uow:
        if acquirer is not None and body.get("responseCode") == QUERIED and body.get("latestTransactionStatus") == "00":
            if await _capture_queried(uow, acquirer, qr, body, now):
                return False
        repo = PaymentRepository(uow.conn)
        bill = await repo.bill_by_id(qr.bill_id, lock=True)
        if bill is None or bill.status is not BillStatus.OPEN:
            return False
        bill.expire()
        await repo.save_expired([bill], now)
        uow.publish(BillExpired(order_id=bill.order_id, bill_id=bill.bill_id, expired_at=bill.expires_at),
                    correlation_id=str(bill.order_id), trace_headers=bill.trace_context or None)
    return True


async def expire_qrs(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients, now: datetime,
                     max_s: float) -> int:
    """The worker's job: expire the QRIS bills past their validity (cancel, query once more, expire)."""
    async with pool.acquire() as conn:  # one read: no transaction
        due = await QrisStore(conn).due_to_expire(now, QUERY_BATCH)
    done = await asyncio.gather(*(_expire_one(pool, acquirers, clients, qr, now, max_s) for qr in due))
    return sum(done)


def partner_refund_no(refund_id: UUID) -> str:
    """Our ``partnerRefundNo`` of a refund: fixed by its id, so each refund (a whole order's, or each
    of a buyer's partial refunds of one order) is its own refund at the acquirer, whatever the retries."""
    return f"RF{refund_id.hex}"


async def record_qris_refund(uow: UnitOfWork, bill: Bill, refund_id: UUID, amount: int, now: datetime) -> bool:
    """A refund recorded for a QRIS bill's payment goes back through qr-mpm-refund: kept with its
    ``partnerRefundNo`` (fixed now, the same on every retry) for `refund_qrs` to send. False when
    there is nothing to send it for (no captured payment, no QR reference, no amount) or it is
    recorded already."""
    store = QrisStore(uow.conn)
    reference_no = await store.qr_reference_of(bill.bill_id)
    payment = await PaymentRepository(uow.conn).captured_for_bill(bill.bill_id)
    if payment is None or bill.partner_reference_no is None or amount <= 0:
        return False
    return await store.add_refund(partner_refund_no(refund_id), refund_id, bill.bill_id, bill.bank,
                                  bill.partner_reference_no, reference_no or payment.payment_request_id, amount, now)


async def _refunded(uow: UnitOfWork, refund: QrRefund, refund_no: str, now: datetime) -> bool:
    """Record the acquirer's ``refundNo`` (once) and tell the order: a buyer's partial refund is paid
    out (``payment.partial_refund_paid_out.v1``, the refundNo as its payout reference), a whole-order
    refund settled (``payment.refund_settled.v1``). False when recorded before."""
    if not await QrisStore(uow.conn).refund_done(refund.partner_refund_no, refund_no, now):
        return False
    partial = PartialRefundRepository(uow.conn)
    if await partial.paying(refund.refund_id):
        await partial.paid_out(refund.refund_id, refund_no, now)
        uow.publish(PartialRefundPaidOut(order_id=refund.order_id, refund_id=refund.refund_id, amount=refund.amount,
                                         payout_reference=refund_no, paid_out_at=now),
                    correlation_id=str(refund.order_id))
    else:
        uow.publish(PaymentRefundSettled(order_id=refund.order_id, refund_id=refund.refund_id, amount=refund.amount,
                                         reference=refund_no, settled_at=now),
                    correlation_id=str(refund.order_id))
    return True


async def _refund_one(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients, refund: QrRefund,
                      now: datetime) -> bool:
    acquirer = acquirers.get(refund.acquirer)
    error: str
    try:
        if acquirer is None:
            raise AcquirerRefused("unknown", {"responseMessage": f"acquirer {refund.acquirer!r} is not configured"})
        body = await clients.client(acquirer).call(QR_REFUND, {
            "originalPartnerReferenceNo": refund.partner_reference_no, "originalReferenceNo": refund.reference_no,
            "partnerRefundNo": refund.partner_refund_no, "refundAmount": _amount(refund.amount),
            "merchantId": acquirer.merchant_id, "reason": "refund"})
        if body.get("responseCode") == REFUNDED and body.get("refundNo"):
            async with unit_of_work(pool) as uow:
                done = await _refunded(uow, refund, str(body["refundNo"]), now)
            if done:
                log.info("QRIS refund %s done: refundNo %s", refund.partner_refund_no, body["refundNo"])
            return done
        error = f"{body.get('responseCode')} {body.get('responseMessage')}"
    except (AcquirerUnavailable, AcquirerRefused) as exc:
        error = str(exc)
    delay = min(MAX_RETRY_DELAY_S * 60, 2.0 ** refund.attempts)
    log.warning("QRIS refund %s not done (%s): next attempt in %.0f s", refund.partner_refund_no, error, delay)
    async with unit_of_work(pool) as uow:
        await QrisStore(uow.conn).refund_failed(refund.partner_refund_no, error, now + timedelta(seconds=delay))
    return False


async def refund_qrs(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients,
                     now: datetime) -> int:
    """The worker's job: send the due QRIS refunds (the same partnerRefundNo until the acquirer says
    2007800, so a refund it made but whose answer we lost is recorded once)."""
    async with unit_of_work(pool) as uow:
        due = await QrisStore(uow.conn).due_refunds(now, QUERY_BATCH)
    done = await asyncio.gather(*(_refund_one(pool, acquirers, clients, r, now) for r in due))
    return sum(done)


async def _probe(clients: AcquirerClients, acquirer: Acquirer) -> None:
    try:
        await clients.client(acquirer).probe()
    except (AcquirerUnavailable, AcquirerRefused) as exc:
        log.info("acquirer %s probe: %s", acquirer.acquirer_id, exc)


async def watch_acquirers(pool: asyncpg.Pool, acquirers: AcquirerRegistry, clients: AcquirerClients) -> int:
    """The worker's job: probe each acquirer whose breaker is open and past its cool-down (no other
    call may come: the order service sheds new QRIS orders meanwhile), then publish
    ``payment.acquirer_state.v1`` for each acquirer whose availability this process has not
    reported yet (every one at start), or that changed; returns how many it published. An acquirer
    back after an outage has the work its outage postponed made due at once (`QrisStore.resume`)."""
    configured = acquirers.all()
    await asyncio.gather(*(_probe(clients, a) for a in configured
                           if clients.client(a).breaker.state is BreakerState.OPEN
                           and clients.client(a).breaker.retry_in() <= 0))
    first = acquirers.first()
    changed = []
    for acquirer in configured:
        availability = clients.availability(acquirer)
        breaker = clients.client(acquirer).breaker
        key = (availability.available, 0.0 if availability.available else breaker.opened_at)
        if clients.reported.get(acquirer.acquirer_id) != key:
            changed.append((acquirer, availability, key))
    if not changed:
        return 0
    now = datetime.now(UTC)
    async with unit_of_work(pool) as uow:
        for acquirer, availability, _ in changed:
            if availability.available and acquirer.acquirer_id in clients.reported:  # back after an outage
                resumed = await QrisStore(uow.conn).resume(acquirer.acquirer_id, now)
                log.info("acquirer %s is back: %d postponed QRs, queries and refunds due now",
                         acquirer.acquirer_id, resumed)
            uow.publish(AcquirerStateChanged(acquirer_id=acquirer.acquirer_id, available=availability.available,
                                             retry_at=availability.retry_at, changed_at=now,
                                             takes_new_bills=acquirer is first),
                        correlation_id=f"acquirer:{acquirer.acquirer_id}")
    for acquirer, availability, key in changed:
        clients.reported[acquirer.acquirer_id] = key
        log.info("acquirer %s reported %s", acquirer.acquirer_id,
                 "available" if availability.available else f"unavailable until {availability.retry_at}")
    return len(changed)
