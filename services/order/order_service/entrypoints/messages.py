"""The order service's subscriptions: one queue per handler.

Handlers that tell partners (``on_serials_issued``, ``on_bill_expired``, ``on_document_stamped``,
``on_document_failed``) name ``partners``: the worker gives them ``OrderDeps.partners``;
``on_sms_requested`` names ``sms`` (the notification adapter), one message per transaction since it
awaits the gateway; it only drains texts an earlier version queued as messages (sign-in texts are
sent from ``sms_outbox`` by the worker's ``TextDispatcher`` now)."""

from __future__ import annotations

from emeterai_shared.contracts.events import (
    AcquirerStateChanged,
    BillExpired,
    BillFailed,
    BillIssued,
    DocumentFailed,
    DocumentStamped,
    MintingFailed,
    PartialRefundPaidOut,
    PaymentCaptured,
    PaymentRefunded,
    PaymentRefundSettled,
    SerialsIssued,
    SerialsVoided,
    SmsRequested,
    StockAwaited,
)
from emeterai_shared.messaging import Subscription

from order_service.service_layer import handlers

SUBSCRIPTIONS = (
    Subscription("order.on_bill_issued", BillIssued, handlers.on_bill_issued),
    Subscription("order.on_bill_failed", BillFailed, handlers.on_bill_failed),
    Subscription("order.on_bill_expired", BillExpired, handlers.on_bill_expired),
    Subscription("order.on_payment_captured", PaymentCaptured, handlers.on_payment_captured),
    Subscription("order.on_payment_refunded", PaymentRefunded, handlers.on_payment_refunded),
    Subscription("order.on_serials_issued", SerialsIssued, handlers.on_serials_issued),
    Subscription("order.on_minting_failed", MintingFailed, handlers.on_minting_failed),
    Subscription("order.on_stock_awaited", StockAwaited, handlers.on_stock_awaited),
    Subscription("order.on_serials_voided", SerialsVoided, handlers.on_serials_voided),
    Subscription("order.on_document_stamped", DocumentStamped, handlers.on_document_stamped),
    Subscription("order.on_sms_requested", SmsRequested, handlers.on_sms_requested, batch_max=1),
    Subscription("order.on_document_failed", DocumentFailed, handlers.on_document_failed),
    Subscription("order.on_partial_refund_paid_out", PartialRefundPaidOut, handlers.on_partial_refund_paid_out),
    Subscription("order.on_payment_refund_settled", PaymentRefundSettled, handlers.on_payment_refund_settled),
    Subscription("order.on_acquirer_state", AcquirerStateChanged, handlers.on_acquirer_state),
)
