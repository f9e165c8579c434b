"""The minting service's subscriptions: one queue per handler (``service_layer.handlers``).

A paid order reaches minting as ``payment.captured`` (a capture that carries the buyer and the
quantity), or, for a capture from an older payment service, as ``order.paid`` from the order."""

from __future__ import annotations

from emeterai_shared.contracts.events import DocumentStamped, OrderPaid, PaymentCaptured, SerialsVoided
from emeterai_shared.messaging import Subscription

from minting_service.service_layer import handlers

SUBSCRIPTIONS = (
    Subscription("minting.on_payment_captured", PaymentCaptured, handlers.on_payment_captured),
    Subscription("minting.on_order_paid", OrderPaid, handlers.on_order_paid),
    Subscription("minting.on_document_stamped", DocumentStamped, handlers.on_document_stamped),
    Subscription("minting.on_serials_voided", SerialsVoided, handlers.on_serials_voided),
)
