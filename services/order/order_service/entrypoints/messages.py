"""The order service's subscriptions: one queue per handler."""

from __future__ import annotations

from typing import Any

from emeterai_shared.contracts.events import (
    BillExpired,
    BillFailed,
    BillIssued,
    PaymentCaptured,
    PaymentRefunded,
)
from emeterai_shared.messaging import Subscription

from order_service.service_layer import handlers


def subscriptions(_: Any) -> list[Subscription]:
    return [
        Subscription("order.on_bill_issued", BillIssued, handlers.on_bill_issued),
        Subscription("order.on_bill_failed", BillFailed, handlers.on_bill_failed),
        Subscription("order.on_bill_expired", BillExpired, handlers.on_bill_expired),
        Subscription("order.on_payment_captured", PaymentCaptured, handlers.on_payment_captured),
        Subscription("order.on_payment_refunded", PaymentRefunded, handlers.on_payment_refunded),
    ]
