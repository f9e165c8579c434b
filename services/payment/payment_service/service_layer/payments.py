"""SNAP virtual-account use cases: the bill inquiry (service 24) and the payment flag (service 25).

A payment flag runs in ONE transaction: record the notification under its X-EXTERNAL-ID and lock
its bill (one statement, which also reads what was captured already), decide, capture (payment
row, bill PAID, ``payment.captured.v1`` in the outbox), store the answer. Every business outcome is
recorded, so a replay gets the first outcome.

Tracing: the bank's callback is a new HTTP request, hence a new trace. A capture publishes
``payment.captured.v1`` in the order's trace (the context kept with the bill when it was issued),
so one trace runs from ``POST /v1/orders`` to the stamps; the callback's own span records a link
to it. Bills issued before the context was kept publish in the callback's trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import uuid4

from emeterai_shared.contracts.events import PaymentCaptured
from emeterai_shared.telemetry import span_context_of
from emeterai_shared.uow import UnitOfWork
from opentelemetry import trace

from payment_service.adapters.repository import ClaimedFlag, NewPayment, PaymentRepository
from payment_service.adapters.snap.codes import Case, Service
from payment_service.adapters.snap.models import (
    InquiryAnswer,
    InquiryRequest,
    PaymentData,
    PaymentFlagAnswer,
    PaymentRequest,
    SnapResult,
    inquiry_response,
    payment_response,
    snap_json,
)
from payment_service.domain.model import (
    Bill,
    BillStatus,
    Decision,
    PaymentFlag,
    SnapRequestKey,
    Verdict,
    decide_payment,
)

REASONS: dict[Case, tuple[str, str]] = {
    Case.SUCCESS: ("Success", "Sukses"),
    Case.VA_NOT_FOUND: ("Virtual account not found", "Virtual account tidak ditemukan"),
    Case.INVALID_AMOUNT: ("Paid amount does not match the bill", "Nominal tidak sesuai tagihan"),
    Case.BILL_ALREADY_PAID: ("Bill already paid", "Tagihan sudah dibayar"),
    Case.VA_EXPIRED: ("Virtual account expired", "Virtual account kedaluwarsa"),
    Case.CONFLICT: ("paymentRequestId already used for another virtual account",
                    "paymentRequestId sudah dipakai untuk virtual account lain"),
}
_VERDICT_CASES = {
    Verdict.CAPTURE: Case.SUCCESS,
    Verdict.ALREADY_CAPTURED: Case.SUCCESS,
    Verdict.INVALID_AMOUNT: Case.INVALID_AMOUNT,
    Verdict.ALREADY_PAID: Case.BILL_ALREADY_PAID,
    Verdict.EXPIRED: Case.VA_EXPIRED,
}


@dataclass(frozen=True)
class PaymentNotice:
    """An authenticated, well-formed payment flag."""

    client_id: str
    external_id: str
    timestamp: datetime
    """X-TIMESTAMP: its Jakarta date scopes the X-EXTERNAL-ID."""
    request: PaymentRequest
    request_hash: str
    trx_time: datetime | None


@dataclass(frozen=True)
class PaymentAnswer:
    body: SnapResult
    captured: Decision | None = None
    """The decision when this request captured the payment."""


async def _find_bill(repo: PaymentRepository, client_id: str, request: InquiryRequest | PaymentRequest) -> Bill | None:
    """The bill behind the request's VA, if it belongs to the calling bank."""
    bill = await repo.bill_by_customer_no(request.customer_no)
    return bill if bill is not None and _bill_of(bill, client_id, request) else None


def _bill_of(bill: Bill, client_id: str, request: InquiryRequest | PaymentRequest) -> bool:
    """Whether the request's VA names ``bill`` and the calling bank issued it."""
    return bill.bank == client_id and bill.virtual_account_no == request.va_digits


async def inquire(uow: UnitOfWork, client_id: str, request: InquiryRequest, now: datetime) -> InquiryAnswer:
    bill = await _find_bill(PaymentRepository(uow.conn), client_id, request)
    if bill is None:
        case = Case.VA_NOT_FOUND
    elif bill.status is BillStatus.PAID:
        case = Case.BILL_ALREADY_PAID
    elif bill.past_due(now):
        case = Case.VA_EXPIRED
    else:
        return inquiry_response(Case.SUCCESS.code(Service.INQUIRY), request, total_amount=bill.amount,
                                virtual_account_name=f"e-Meterai x{bill.quantity}")
    english, indonesian = REASONS[case]
    return inquiry_response(case.code(Service.INQUIRY), request, reason_en=english, reason_id=indonesian)


async def flag_payment(uow: UnitOfWork, notice: PaymentNotice, now: datetime) -> PaymentAnswer:
    repo = PaymentRepository(uow.conn)
    request = notice.request
    key = SnapRequestKey.of(notice.client_id, notice.external_id, notice.timestamp)
    claimed = await repo.claim_flag(key, request.payment_request_id, notice.request_hash, request.customer_no)
    if claimed is None:
        first = await repo.snap_request(key)
        if (first["payment_request_id"], first["request_hash"]) == (request.payment_request_id, notice.request_hash):
            replay = PaymentFlagAnswer.of(Case.INCONSISTENT_REQUEST.code(Service.PAYMENT))
            replay.virtualAccountData = PaymentData.model_validate(first["response"]["virtualAccountData"])
            return PaymentAnswer(replay)
        return PaymentAnswer(SnapResult.of(Case.CONFLICT.code(Service.PAYMENT),
                                           "Conflict. X-EXTERNAL-ID already used today for another request"))
    case, captured, payment = await _decide(uow, repo, notice, now, claimed)
    english, indonesian = REASONS[case]
    body = payment_response(case.code(Service.PAYMENT), request, "00" if case is Case.SUCCESS else "01",
                            english, indonesian)
    if payment is not None:  # payment row, bill PAID, the answer and payment.captured.v1: one statement
        await repo.capture(uow, payment, key, snap_json(body))
    else:
        await repo.store_snap_response(key, snap_json(body))
    return PaymentAnswer(body, captured)


async def _decide(uow: UnitOfWork, repo: PaymentRepository, notice: PaymentNotice, now: datetime,
                  claimed: ClaimedFlag) -> tuple[Case, Decision | None, NewPayment | None]:
    """The answer's case; on a capture also the decision and the payment to record (the caller
    records it with the answer; ``payment.captured.v1`` is published already)."""
    request = notice.request
    bill = claimed.bill
    if bill is None or not _bill_of(bill, notice.client_id, request):
        return Case.VA_NOT_FOUND, None, None
    request_bill, captured = claimed.request_bill, claimed.captured
    if not claimed.captured_is_fresh:  # paid since the claim's snapshot, maybe by a twin: read again
        request_bill, captured = await repo.payments_seen(bill.bill_id, notice.client_id, request.payment_request_id)
    if request_bill not in (None, bill.bill_id):
        return Case.CONFLICT, None, None
    try:
        amount: int | None = request.paid_amount.to_rupiah()
    except ValueError:
        amount = None
    flag = PaymentFlag(request.payment_request_id, amount, request.is_advice, notice.trx_time)
    decision = decide_payment(bill, captured, flag, now)
    if decision.verdict is not Verdict.CAPTURE:
        return _VERDICT_CASES[decision.verdict], None, None
    bill.pay(late=decision.late)
    payment = NewPayment(uuid4(), bill, notice.client_id, request.payment_request_id, bill.amount,
                         request.trx_id, request.reference_no, notice.trx_time, decision.late, now)
    order_trace = bill.trace_context or None
    _link_to_order_trace(order_trace)
    uow.publish(PaymentCaptured(order_id=bill.order_id, bill_id=bill.bill_id, payment_id=payment.payment_id,
                                amount=payment.amount, bank=payment.client_id,
                                payment_request_id=payment.payment_request_id, captured_at=now,
                                late=decision.late, method="va", reference_no=request.reference_no,
                                **bill.buyer()),
                correlation_id=str(bill.order_id), trace_headers=order_trace)
    return Case.SUCCESS, decision, payment


def _link_to_order_trace(order_trace: Mapping[str, str] | None) -> None:
    """Link the current span (the bank callback's HTTP span) to the order's trace, which the
    capture's events continue, so either trace leads to the other (only a recorded span keeps it)."""
    span = trace.get_current_span()
    linked = span_context_of(order_trace) if order_trace and span.is_recording() else None
    if linked is not None:
        span.add_link(linked, {"emeterai.link": "order"})
