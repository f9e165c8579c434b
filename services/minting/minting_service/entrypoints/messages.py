"""The minting service's subscriptions: one queue per handler (``service_layer.handlers``)."""

from __future__ import annotations

from emeterai_shared.contracts.events import DocumentStamped, OrderPaid, SerialsVoided
from emeterai_shared.messaging import Subscription

from minting_service.service_layer import handlers

SUBSCRIPTIONS = (
    Subscription("minting.on_order_paid", OrderPaid, handlers.on_order_paid),
    Subscription("minting.on_document_stamped", DocumentStamped, handlers.on_document_stamped),
    Subscription("minting.on_serials_voided", SerialsVoided, handlers.on_serials_voided),
)
