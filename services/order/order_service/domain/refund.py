"""A buyer's refund of an order's unused stamps (pure: no I/O).

::

    REQUESTED ──stamping voided some──► PAYING ──payment paid out──► PAID_OUT
        └──stamping kept every one (in use)──► NOTHING

The order service does not decide which stamps are unused: the stamping service does, under the
same row locks ``POST /v1/stampings`` takes to reserve a stamp, so a stamp being used at that
moment is either stamped or refunded, never both (``order.serials_void_requested.v1`` with a
``refund_id``, answered by ``stamping.serials_voided.v1``). The order only asks for the serials
that may still be unused as far as it knows (``refundable``) and refunds what was voided.

The amount is the order's per-stamp price (duty Rp 10.000 plus the service fee share) times the
stamps voided: the fee is refunded with its stamp, as when an order gives serials back, so every
rupiah captured ends as a stamp the buyer kept or as money refunded.

The order keeps its status (FULFILLED): REFUND_PENDING/REFUNDED are whole-order refunds. A
whole-order refund of a QRIS payment is kept beside them too (``RefundKind.ORDER``, no serials:
PAYING, then PAID_OUT with the acquirer's ``refundNo``), so the order view and the receipt show it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from order_service.domain.order import Order, OrderStatus

BUYER_REFUND_REASON = "refund of unused stamps requested by the buyer"


class RefundStatus(StrEnum):
    REQUESTED = "REQUESTED"
    """Stamping is asked to void the serials; not decided yet."""
    PAYING = "PAYING"
    """Some were voided (out of the quota, VOID in the registry); the payment service pays out."""
    PAID_OUT = "PAID_OUT"
    """The money went back to the buyer (final)."""
    NOTHING = "NOTHING"
    """Every serial asked for was in use: nothing refunded (final)."""


class RefundKind(StrEnum):
    STAMPS = "stamps"
    """A buyer's refund of unused stamps (``POST /v1/orders/{id}/refund``)."""
    ORDER = "order"
    """A whole-order refund of a QRIS payment (paid after expiry, or the order cannot be fulfilled),
    recorded by the payment service (``payment.refunded.v1``): PAYING until the acquirer has made it,
    then PAID_OUT with its ``refundNo`` (``payment.refund_settled.v1``)."""


class NothingToRefund(ValueError):
    """409 ``nothing_to_refund``: the order is not FULFILLED, or every serial is used, refunded or
    being refunded as far as the order service knows."""


class RefundStateError(ValueError):
    pass


@dataclass
class Refund:
    refund_id: uuid.UUID
    order_id: uuid.UUID
    requested: list[str]
    requested_at: datetime
    voided: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    amount: int = 0
    status: RefundStatus = RefundStatus.REQUESTED
    payout_reference: str | None = None
    decided_at: datetime | None = None
    paid_out_at: datetime | None = None
    kind: RefundKind = RefundKind.STAMPS

    @classmethod
    def whole_order(cls, refund_id: uuid.UUID, order_id: uuid.UUID, amount: int, at: datetime) -> Refund:
        """The payment service's refund of the whole order (its ``refund_id``): being paid back."""
        return cls(refund_id=refund_id, order_id=order_id, requested=[], requested_at=at, amount=amount,
                   status=RefundStatus.PAYING, decided_at=at, kind=RefundKind.ORDER)

    @property
    def holds(self) -> list[str]:
        """Serials this refund takes out of any later refund: those asked for until stamping
        answers, then those voided (kept ones may become unused again: a failed stamping frees
        its stamp)."""
        return self.requested if self.status is RefundStatus.REQUESTED else self.voided

    @property
    def serials(self) -> list[str]:
        """The serials refunded: those asked for until decided, then those voided."""
        return self.holds

    def settle(self, voided: Iterable[str], kept: Iterable[str], per_stamp: int, at: datetime) -> int:
        """Apply stamping's answer; returns the amount to pay out (0: NOTHING). Only serials this
        refund asked for count (anything else in the answer is ignored)."""
        if self.status is not RefundStatus.REQUESTED:
            raise RefundStateError(f"refund {self.refund_id} is {self.status}: already decided")
        asked = set(self.requested)
        voided_set, kept_set = set(voided) & asked, set(kept) & asked
        self.voided = [sn for sn in self.requested if sn in voided_set and sn not in kept_set]
        self.kept = [sn for sn in self.requested if sn in kept_set]
        self.amount = per_stamp * len(self.voided)
        self.status = RefundStatus.PAYING if self.voided else RefundStatus.NOTHING
        self.decided_at = at
        return self.amount

    def paid_out(self, reference: str, at: datetime) -> bool:
        """The payment service paid it out; False when already recorded (a redelivery)."""
        if self.status is RefundStatus.PAID_OUT:
            return False
        if self.status is not RefundStatus.PAYING:
            raise RefundStateError(f"refund {self.refund_id} is {self.status}: nothing to pay out")
        self.status, self.payout_reference, self.paid_out_at = RefundStatus.PAID_OUT, reference, at
        return True


def refundable(order: Order, stamped: Iterable[str], refunds: Sequence[Refund]) -> list[str]:
    """The order's serials that may still be unused: not known to be stamped, not refunded and not
    being refunded. Raises ``NothingToRefund`` when there is none or the order is not FULFILLED."""
    if order.status is not OrderStatus.FULFILLED:
        raise NothingToRefund(f"the order is {order.status}, not FULFILLED")
    taken = set(stamped).union(*(r.holds for r in refunds))
    rest = [sn for sn in order.serials if sn not in taken]
    if not rest:
        raise NothingToRefund("every stamp of the order is used, refunded or being refunded")
    return rest
