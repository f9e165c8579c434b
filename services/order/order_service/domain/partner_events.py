"""What partner systems are told about their orders (pure: no I/O).

An event's body is the same in the pull feed and in the webhook: ``{"id", "type", "created_at",
"data"}`` (Standard Webhooks). Its id is derived from what it is about (the order, the stamped
serial), so an event recorded twice is one event with one ``webhook-id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from order_service.domain.order import Order

ORDER_FULFILLED = "order.fulfilled"
STAMPING_COMPLETED = "stamping.completed"
ORDER_EXPIRED = "order.expired"
STAMPING_FAILED = "stamping.failed"
ORDER_REFUNDED = "order.refunded"
_EVENT_NAMESPACE = uuid.UUID("0b7f4f52-3c1e-4d7e-9a55-6b0e2f1c8d40")


def timestamp(at: datetime) -> str:
    """ISO 8601 in UTC with microseconds and ``Z``, as Standard Webhooks examples write it."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PartnerEvent:
    event_id: uuid.UUID
    type: str
    created_at: datetime
    data: dict[str, Any]

    def body(self) -> dict[str, Any]:
        """The webhook body and feed entry."""
        return {"id": str(self.event_id), "type": self.type, "created_at": timestamp(self.created_at),
                "data": self.data}


def _event_id(type_: str, subject: str) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NAMESPACE, f"{type_}:{subject}")


def order_fulfilled(order: Order, stamps: Sequence[tuple[str, str]], at: datetime) -> PartnerEvent:
    """The order's serials are issued; ``stamps`` are ``(sn, token)`` pairs in issue order."""
    return PartnerEvent(_event_id(ORDER_FULFILLED, str(order.id)), ORDER_FULFILLED, at, {
        "order_id": str(order.id), "quantity": order.quantity,
        "serials": [{"sn": sn, "token": token} for sn, token in stamps],
    })


def stamping_completed(*, order_id: uuid.UUID, stamping_id: uuid.UUID, sn: str, document_sha256: str,
                       stamped_at: datetime, at: datetime) -> PartnerEvent:
    """A document was stamped with a serial of the partner's order (a serial is stamped once)."""
    return PartnerEvent(_event_id(STAMPING_COMPLETED, sn), STAMPING_COMPLETED, at, {
        "stamping_id": str(stamping_id), "sn": sn, "order_id": str(order_id),
        "document_sha256": document_sha256, "stamped_at": timestamp(stamped_at),
    })


def order_expired(order: Order, expired_at: datetime, at: datetime) -> PartnerEvent:
    """The order's bill expired unpaid (an order expires once)."""
    return PartnerEvent(_event_id(ORDER_EXPIRED, str(order.id)), ORDER_EXPIRED, at, {
        "order_id": str(order.id), "quantity": order.quantity, "amount": order.amount,
        "expired_at": timestamp(expired_at),
    })


def stamping_failed(*, order_id: uuid.UUID, stamping_id: uuid.UUID, sn: str, error: str, failed_at: datetime,
                    at: datetime) -> PartnerEvent:
    """A stamping job with a serial of the partner's order failed for good; the serial is available
    again (a job fails once, so the event is keyed by the job)."""
    return PartnerEvent(_event_id(STAMPING_FAILED, str(stamping_id)), STAMPING_FAILED, at, {
        "stamping_id": str(stamping_id), "sn": sn, "order_id": str(order_id), "error": error,
        "failed_at": timestamp(failed_at),
    })


def order_refunded(*, order_id: uuid.UUID, refund_id: uuid.UUID, serials: Sequence[str], amount: int,
                   at: datetime) -> PartnerEvent:
    """A buyer's refund of unused stamps was paid out: ``serials`` are VOID, ``amount`` went back."""
    return PartnerEvent(_event_id(ORDER_REFUNDED, str(refund_id)), ORDER_REFUNDED, at, {
        "order_id": str(order_id), "refund_id": str(refund_id), "serials": list(serials), "amount": amount,
    })
