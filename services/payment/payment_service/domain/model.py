"""Bills and payment decisions: the pure model of the payment service (no I/O).

A bill moves ``OPEN → PAID`` (captured) or ``OPEN → EXPIRED`` (unpaid past ``expires_at``). One
more edge exists because banks move money before they tell us: ``EXPIRED → PAID`` for a *late
advice*, a re-sent notification (``flagAdvise = "Y"``) of a transaction the bank made before the
bill expired. Such a capture is marked ``late`` so the order service can refund it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import Enum, StrEnum
from typing import Any, NamedTuple
from uuid import UUID

CUSTOMER_NO_DIGITS = 12

JAKARTA = timezone(timedelta(hours=7))
"""Asia/Jakarta (WIB) has been a fixed UTC+07:00 without daylight saving since 1964: the banks'
day (X-EXTERNAL-ID scope) and the time of settlement lines without an offset."""


class BillStatus(StrEnum):
    OPEN = "OPEN"
    PAID = "PAID"
    EXPIRED = "EXPIRED"


class InvalidTransition(RuntimeError):
    """A state change the bill's state machine does not allow."""


def new_customer_no() -> str:
    """A random customer number of 12 digits (uniqueness is the repository's unique index)."""
    return f"{secrets.randbelow(10**CUSTOMER_NO_DIGITS):0{CUSTOMER_NO_DIGITS}d}"


@dataclass
class Bill:
    bill_id: UUID
    order_id: UUID
    bank: str
    customer_no: str
    virtual_account_no: str
    amount: int
    quantity: int
    status: BillStatus
    expires_at: datetime
    trace_context: Mapping[str, str] | None = None
    """W3C ``traceparent``/``tracestate`` of the order's trace; events about the bill continue it."""
    method: str = "va"
    """``va`` (virtual account) or ``qris`` (then ``bank`` is the acquirer, ``virtual_account_no`` empty)."""
    partner_reference_no: str | None = None
    """QRIS: our ``partnerReferenceNo``, stored with the bill before the QR is asked for (the idempotency key)."""
    account_id: UUID | None = None
    """The buyer (from ``order.placed``), announced with the capture; None for bills issued before it was kept."""
    partner_id: str | None = None

    def buyer(self) -> dict[str, Any]:
        """What ``payment.captured`` tells minting of the order (buyer, quantity, partner), so that it
        issues the serials straight from the capture; nothing for a bill issued before the buyer
        was kept (its order then sends ``order.paid``)."""
        if self.account_id is None:
            return {}
        return {"account_id": self.account_id, "quantity": self.quantity, "partner_id": self.partner_id}

    def past_due(self, now: datetime) -> bool:
        """Expired, or unpaid past its expiry before the sweep got to it."""
        return self.status is BillStatus.EXPIRED or (self.status is BillStatus.OPEN and now > self.expires_at)

    def expire(self) -> None:
        if self.status is not BillStatus.OPEN:
            raise InvalidTransition(f"bill {self.bill_id} is {self.status}, cannot expire")
        self.status = BillStatus.EXPIRED

    def pay(self, *, late: bool) -> None:
        if self.status is BillStatus.PAID or (self.status is BillStatus.EXPIRED and not late):
            raise InvalidTransition(f"bill {self.bill_id} is {self.status}, cannot be paid")
        self.status = BillStatus.PAID


@dataclass(frozen=True)
class CapturedPayment:
    """The payment already captured for a bill."""

    payment_id: UUID
    payment_request_id: str
    amount: int


class SnapRequestKey(NamedTuple):
    """A bank's notification id: X-EXTERNAL-ID is unique per bank per day (Asia/Jakarta)."""

    client_id: str
    external_id: str
    day: date

    @classmethod
    def of(cls, client_id: str, external_id: str, timestamp: datetime) -> SnapRequestKey:
        """The key of a notification sent at ``timestamp`` (its X-TIMESTAMP)."""
        return cls(client_id, external_id, timestamp.astimezone(JAKARTA).date())


@dataclass(frozen=True)
class PaymentFlag:
    """What the bank tells us: it took ``amount`` from the payer (None: not whole rupiah)."""

    payment_request_id: str
    amount: int | None
    advice: bool
    trx_time: datetime | None


class Verdict(Enum):
    CAPTURE = "capture"
    ALREADY_CAPTURED = "already_captured"
    """The same payment again (a re-send): answer success, capture nothing."""
    INVALID_AMOUNT = "invalid_amount"
    ALREADY_PAID = "already_paid"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    late: bool = False


def decide_payment(bill: Bill, captured: CapturedPayment | None, flag: PaymentFlag, now: datetime) -> Decision:
    """Decide a payment notification for ``bill``, given the payment already captured for it."""
    if captured is not None:
        if captured.payment_request_id != flag.payment_request_id:
            return Decision(Verdict.ALREADY_PAID)
        if captured.amount != flag.amount:
            return Decision(Verdict.INVALID_AMOUNT)
        return Decision(Verdict.ALREADY_CAPTURED)
    if flag.amount != bill.amount:
        return Decision(Verdict.INVALID_AMOUNT)
    if bill.past_due(now):
        in_time = flag.trx_time is not None and flag.trx_time <= bill.expires_at
        if flag.advice and in_time:
            return Decision(Verdict.CAPTURE, late=True)
        return Decision(Verdict.EXPIRED)
    return Decision(Verdict.CAPTURE)
