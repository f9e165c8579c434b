"""The order aggregate and its state machine (pure: no I/O).

::

    AWAITING_PAYMENT ──captured──► PAID ──serials issued──► FULFILLED
         │  │                        └──cannot fulfil──► REFUND_PENDING ──refunded──► REFUNDED
         │  └──bill expired──► EXPIRED ──captured late──┘
         └──no bill possible──► FAILED (always with a reason)

``EXPIRED → REFUND_PENDING`` exists because a bank may report a payment made before the bill
expired after we expired it (a SNAP advice, ``flagAdvise=Y``): the money was taken, so it is
refunded, never silently kept. Every other transition is refused with ``IllegalTransition``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

DUTY_PER_STAMP = 10_000


class OrderStatus(StrEnum):
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    PAID = "PAID"
    FULFILLED = "FULFILLED"
    EXPIRED = "EXPIRED"
    REFUND_PENDING = "REFUND_PENDING"
    REFUNDED = "REFUNDED"
    FAILED = "FAILED"


S = OrderStatus
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.AWAITING_PAYMENT: frozenset({S.PAID, S.EXPIRED, S.FAILED}),
    S.PAID: frozenset({S.FULFILLED, S.REFUND_PENDING}),
    S.EXPIRED: frozenset({S.REFUND_PENDING}),
    S.REFUND_PENDING: frozenset({S.REFUNDED}),
    S.FULFILLED: frozenset(),
    S.REFUNDED: frozenset(),
    S.FAILED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, order_id: uuid.UUID, current: OrderStatus, wanted: OrderStatus):
        super().__init__(f"order {order_id}: {current} cannot become {wanted}")
        self.current = current
        self.wanted = wanted


def price(quantity: int, service_fee: int) -> int:
    """Amount due in rupiah: the duty plus our service fee, per stamp."""
    if quantity < 1:
        raise ValueError("quantity must be at least 1")
    return quantity * (DUTY_PER_STAMP + service_fee)


@dataclass(frozen=True)
class Bill:
    virtual_account_no: str
    amount: int
    expires_at: datetime


@dataclass(frozen=True)
class Transition:
    old: OrderStatus
    new: OrderStatus
    reason: str | None


@dataclass
class Order:
    id: uuid.UUID
    account_id: uuid.UUID
    quantity: int
    amount: int
    status: OrderStatus = OrderStatus.AWAITING_PAYMENT
    bank: str | None = None
    partner_id: str | None = None
    failure_reason: str | None = None
    bill: Bill | None = None
    payment_id: uuid.UUID | None = None
    serials: list[str] = field(default_factory=list)
    changes: list[Transition] = field(default_factory=list)

    def can_become(self, new: OrderStatus) -> bool:
        return new in TRANSITIONS[self.status]

    def _move(self, new: OrderStatus, reason: str | None = None) -> None:
        if not self.can_become(new):
            raise IllegalTransition(self.id, self.status, new)
        self.changes.append(Transition(self.status, new, reason))
        self.status = new

    def attach_bill(self, bill: Bill) -> None:
        self.bill = bill

    def fail(self, reason: str) -> None:
        if not reason:
            raise ValueError("FAILED needs a recorded reason")
        self._move(S.FAILED, reason)
        self.failure_reason = reason

    def expire(self) -> None:
        self._move(S.EXPIRED, "bill expired unpaid")

    def capture(self, payment_id: uuid.UUID, *, late: bool) -> bool:
        """Apply a captured payment. True: the order is PAID and can be fulfilled; False: it
        must be refunded (the payment came after the order expired). A refused capture
        (``IllegalTransition``) leaves the order untouched, payment id included."""
        if late and self.status is S.AWAITING_PAYMENT:
            self.expire()
        if self.status is S.EXPIRED:
            self.request_refund("paid after the order expired")
            self.payment_id = payment_id
            return False
        self._move(S.PAID, "payment captured")
        self.payment_id = payment_id
        return True

    def request_refund(self, reason: str) -> None:
        self._move(S.REFUND_PENDING, reason)
        self.failure_reason = reason

    def cannot_fulfil(self, reason: str) -> None:
        """No serials can be issued for this paid order (minting failed): its money goes back.
        Only a PAID order has money waiting for serials; any other state refuses."""
        if self.status is not S.PAID:
            raise IllegalTransition(self.id, self.status, S.REFUND_PENDING)
        self.request_refund(reason)

    def refunded(self) -> None:
        self._move(S.REFUNDED, "refund recorded")

    def fulfil(self, serials: list[str]) -> None:
        if len(serials) != self.quantity:
            raise ValueError(f"order {self.id} needs {self.quantity} serials, got {len(serials)}")
        if len(set(serials)) != len(serials):
            raise ValueError(f"order {self.id}: the same serial twice in {serials}")
        self._move(S.FULFILLED, "serials issued")
        self.serials = list(serials)
