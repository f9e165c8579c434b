"""Receipts of paid orders (pure: no I/O).

A receipt exists exactly for an order whose payment was captured for stamps (the order became
PAID): its number is taken in the same transaction that records the payment, from one counter row
per year, so the numbers of a year run 1, 2, 3, ... with none skipped and none given twice, and a
number never changes once given. The year is the payment's year in Asia/Jakarta time (WIB), the
time printed on the receipt: ``EM-2026-0000001``. Past 9 999 999 receipts in a year the number
simply grows a digit.

The receipt shows the duty (Rp 10.000 per stamp, owed to the state) apart from our service fee;
together they are the amount the buyer paid.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

from order_service.domain.order import DUTY_PER_STAMP

WIB = timezone(timedelta(hours=7), "WIB")
"""Asia/Jakarta: a fixed UTC+07:00 without daylight saving since 1964."""

PREFIX = "EM"
DIGITS = 7


def receipt_year(paid_at: datetime) -> int:
    """The numbering year of a payment: its year in Asia/Jakarta time (a time without a zone is UTC)."""
    return _aware(paid_at).astimezone(WIB).year


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def receipt_number(year: int, seq: int) -> str:
    """``EM-<year>-<seq, 7 digits>``: the ``seq``-th receipt of ``year`` (from 1)."""
    if seq < 1:
        raise ValueError("receipt numbers start at 1")
    return f"{PREFIX}-{year:04d}-{seq:0{DIGITS}d}"


def rupiah(amount: int) -> str:
    """``Rp 10.000``: Indonesian thousands separators."""
    sign = "-" if amount < 0 else ""
    return f"{sign}Rp {abs(amount):,}".replace(",", ".")


def wib(at: datetime) -> str:
    """The time as printed on a receipt: ``2026-12-06 22:35:51 WIB``."""
    return _aware(at).astimezone(WIB).strftime("%Y-%m-%d %H:%M:%S WIB")


@dataclass(frozen=True)
class ReceiptRefund:
    """A buyer refund of some of the order's stamps, as the receipt lists it."""

    refund_id: uuid.UUID
    serials: list[str]
    amount: int
    status: str
    kind: Literal["stamps", "order"] = "stamps"
    """``order``: the whole order's refund of a QRIS payment (no serials)."""
    reference: str | None = None
    """Once paid out: the reference of the money paid back (QRIS: the acquirer's ``refundNo``)."""


@dataclass(frozen=True)
class Payment:
    method: str
    """``va`` (virtual account); later ``qris``."""
    bank: str | None
    payment_request_id: str | None
    """The bank's id of the payment (SNAP ``paymentRequestId``)."""
    reference_no: str | None
    """The bank's reference number (SNAP ``referenceNo``), when it sent one."""
    virtual_account_no: str | None = None

    @property
    def reference(self) -> str | None:
        """What the buyer quotes to the bank: its reference number, else its payment request id."""
        return self.reference_no or self.payment_request_id


@dataclass(frozen=True)
class Receipt:
    receipt_no: str
    order_id: uuid.UUID
    account_id: uuid.UUID
    buyer: str
    """The buyer account as printed: its name, or the partner system's id."""
    paid_at: datetime
    quantity: int
    total: int
    payment: Payment
    serials: list[str] = field(default_factory=list)
    refunds: list[ReceiptRefund] = field(default_factory=list)

    @property
    def duty(self) -> int:
        """The stamp duty: Rp 10.000 x quantity."""
        return DUTY_PER_STAMP * self.quantity

    @property
    def fee(self) -> int:
        """Our service fee: what was paid beyond the duty."""
        return self.total - self.duty

    @property
    def duty_per_stamp(self) -> int:
        return DUTY_PER_STAMP
