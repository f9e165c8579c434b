"""The order aggregate and its state machine (pure: no I/O).

::

    AWAITING_PAYMENT ──captured──► PAID ──serials issued──► FULFILLED
         │  │                        └──cannot fulfil──► REFUND_PENDING ──refunded──► REFUNDED
         │  └──bill expired──► EXPIRED ──captured late──┘
         └──no bill possible──► FAILED (always with a reason)

A PAID order may wait in PAID for two things, shown in its view but not statuses (the contract
fixes the list): its serials may **await stock** (``await_stock``: minting issues them when stock
arrives, or fails them at ``refund_at``, which refunds the order); and serials it could not accept
(too many, too few, another order's, or arriving when it is not PAID) are **given back**
(``give_back``): the order asks the stamping service to take them out of the buyer's quota; its
answer (``settle_given_back``) refunds what was voided (REFUND_PENDING) or, when every serial was
already used, fulfils the order with them. Never both, never neither.

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
    method: str = "va"
    qr_content: str | None = None
    """QRIS bills: the EMV string to draw as a QR (``virtual_account_no`` is empty then)."""


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
    payment_method: str = "va"
    failure_reason: str | None = None
    bill: Bill | None = None
    payment_id: uuid.UUID | None = None
    serials: list[str] = field(default_factory=list)
    awaiting_stock_since: datetime | None = None
    stock_refund_at: datetime | None = None
    giving_back: list[str] = field(default_factory=list)
    """Serials the order asked the stamping service to void, until it answers."""
    changes: list[Transition] = field(default_factory=list)

    @property
    def awaits_stock(self) -> bool:
        return self.status is S.PAID and self.awaiting_stock_since is not None and not self.giving_back

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

    def cannot_fulfil(self, reason: str) -> bool:
        """No serials can be issued for this paid order (minting failed): its money goes back.
        Only a PAID order has money waiting for serials; any other state refuses. False: serials
        it gave back still await stamping's answer, and the refund waits for it (less the stamps
        that turn out to be kept, see ``settle_given_back``)."""
        if self.status is not S.PAID:
            raise IllegalTransition(self.id, self.status, S.REFUND_PENDING)
        if self.giving_back:
            self.failure_reason = reason
            self.changes.append(Transition(S.PAID, S.PAID, f"{reason}; refunded once the serials given back "
                                                           "are settled"))
            return False
        self.request_refund(reason)
        return True

    def refunded(self) -> None:
        self._move(S.REFUNDED, "refund recorded")

    def await_stock(self, since: datetime, refund_at: datetime) -> None:
        """Minting waits for stock for this PAID order (recorded, the status stays PAID)."""
        if self.status is not S.PAID:
            raise IllegalTransition(self.id, self.status, S.PAID)
        if self.awaiting_stock_since is None:
            self.changes.append(Transition(S.PAID, S.PAID, f"awaiting stock; refunded at {refund_at.isoformat()} "
                                                           "unless stock arrives"))
        self.awaiting_stock_since, self.stock_refund_at = since, refund_at

    def give_back(self, serials: list[str], reason: str) -> None:
        """The PAID order cannot accept ``serials``: they are to be voided before any refund."""
        if self.status is not S.PAID:
            raise IllegalTransition(self.id, self.status, S.REFUND_PENDING)
        self.giving_back = list(dict.fromkeys([*self.giving_back, *serials]))
        self.failure_reason = reason
        self.changes.append(Transition(S.PAID, S.PAID, f"giving back {len(serials)} serial(s): {reason}"))

    def per_stamp(self) -> int:
        return self.amount // self.quantity

    def settle_given_back(self, voided: list[str], kept: list[str]) -> int | None:
        """Apply the stamping service's answer to ``give_back``: the serials kept (used before
        they could be voided) stay the buyer's. Once nothing more is being given back, returns the
        amount to refund: the order's amount less the kept stamps at the per-stamp price
        (REFUND_PENDING), or 0 when nothing is left to refund (FULFILLED with the kept serials).
        None: nothing decided now (other serials still being given back, or the order is no longer
        PAID: fulfilled with its own serials meanwhile, or refunded)."""
        asked = set(self.giving_back)
        answered = asked & {*voided, *kept}
        if not answered:
            return None
        self.giving_back = [sn for sn in self.giving_back if sn not in answered]
        if self.status is not S.PAID:
            return None
        self.serials = list(dict.fromkeys([*self.serials, *(sn for sn in kept if sn in asked)]))
        if self.giving_back:
            return None
        refund = max(0, self.amount - self.per_stamp() * len(self.serials))
        if refund == 0:
            self._move(S.FULFILLED, f"kept {len(self.serials)} serial(s) used before they could be voided")
        else:
            self.request_refund(f"{self.failure_reason or 'serials given back'}; {len(self.serials)} kept (used): "
                                f"refund {refund}")
        return refund

    def fulfil(self, serials: list[str]) -> None:
        if len(serials) != self.quantity:
            raise ValueError(f"order {self.id} needs {self.quantity} serials, got {len(serials)}")
        if len(set(serials)) != len(serials):
            raise ValueError(f"order {self.id}: the same serial twice in {serials}")
        self._move(S.FULFILLED, "serials issued")
        self.serials = list(serials)
