"""The payment service's subscriptions: one queue per handler (``service_layer.handlers``)."""

from __future__ import annotations

from emeterai_shared.contracts.events import OrderPlaced, OrderRefundRequested, PartialRefundRequested
from emeterai_shared.messaging import Subscription

from payment_service.service_layer import handlers

SUBSCRIPTIONS = (
    Subscription("payment.on_order_placed", OrderPlaced, handlers.on_order_placed),
    Subscription("payment.on_order_refund_requested", OrderRefundRequested, handlers.on_order_refund_requested),
    Subscription("payment.on_partial_refund_requested", PartialRefundRequested,
                 handlers.on_partial_refund_requested),
)
