"""The platform's subscription table: every consumer queue of every service, in one place.

A message type with several consumers (``minting.serials_issued.v1``: order and stamping) is
copied to whichever of their queues exist when it is published, and ``mandatory`` only catches a
type that reaches no queue at all: had stamping's queue not existed yet, its copy would be lost
for good while order's was delivered. So every process that declares topology at start (each
service's ``setup``, and every relay before its first publish) declares *all* these queues, its
own service's and everyone else's; a consumer deployed later finds its backlog waiting.

Queue arguments come from this table (``QueueSpec``'s defaults unless an entry says otherwise),
never from one service's settings: whichever service declares a queue first, the others declare
it identically, so RabbitMQ never refuses one of them with ``PRECONDITION_FAILED``.

Adding a subscription to a service (its ``entrypoints/messages.py``) means adding its queue here,
with the message type(s) it consumes: ``tests/test_subscription_table.py`` fails until every
subscription of every service is in the table with the same type, and every entry has a consumer.
Until then the service still declares its own queue itself (with a warning), as before.
"""

from __future__ import annotations

from emeterai_shared.contracts import events
from emeterai_shared.messaging.topology import QueueSpec

STAMPING_JOB_QUEUED = "stamping.job_queued.v1"
"""The stamping service's message to itself (``stamping_service.domain.contracts``, not a shared contract)."""

PLATFORM_QUEUES: tuple[QueueSpec, ...] = (
    # order
    QueueSpec("order.on_bill_issued", (events.BillIssued.TYPE,)),
    QueueSpec("order.on_bill_failed", (events.BillFailed.TYPE,)),
    QueueSpec("order.on_bill_expired", (events.BillExpired.TYPE,)),
    QueueSpec("order.on_payment_captured", (events.PaymentCaptured.TYPE,)),
    QueueSpec("order.on_payment_refunded", (events.PaymentRefunded.TYPE,)),
    QueueSpec("order.on_serials_issued", (events.SerialsIssued.TYPE,)),
    QueueSpec("order.on_minting_failed", (events.MintingFailed.TYPE,)),
    QueueSpec("order.on_stock_awaited", (events.StockAwaited.TYPE,)),
    QueueSpec("order.on_serials_voided", (events.SerialsVoided.TYPE,)),
    QueueSpec("order.on_document_stamped", (events.DocumentStamped.TYPE,)),
    QueueSpec("order.on_sms_requested", (events.SmsRequested.TYPE,)),
    QueueSpec("order.on_document_failed", (events.DocumentFailed.TYPE,)),
    QueueSpec("order.on_partial_refund_paid_out", (events.PartialRefundPaidOut.TYPE,)),
    QueueSpec("order.on_payment_refund_settled", (events.PaymentRefundSettled.TYPE,)),
    QueueSpec("order.on_acquirer_state", (events.AcquirerStateChanged.TYPE,)),
    # payment
    QueueSpec("payment.on_order_placed", (events.OrderPlaced.TYPE,)),
    QueueSpec("payment.on_order_refund_requested", (events.OrderRefundRequested.TYPE,)),
    QueueSpec("payment.on_partial_refund_requested", (events.PartialRefundRequested.TYPE,)),
    # minting
    QueueSpec("minting.on_payment_captured", (events.PaymentCaptured.TYPE,)),
    QueueSpec("minting.on_order_paid", (events.OrderPaid.TYPE,)),
    QueueSpec("minting.on_document_stamped", (events.DocumentStamped.TYPE,)),
    QueueSpec("minting.on_serials_voided", (events.SerialsVoided.TYPE,)),
    # stamping
    QueueSpec("stamping.on_serials_issued", (events.SerialsIssued.TYPE,)),
    QueueSpec("stamping.on_serials_void_requested", (events.SerialsVoidRequested.TYPE,)),
    QueueSpec("stamping.on_job_queued", (STAMPING_JOB_QUEUED,)),
    QueueSpec("stamping.on_account_verified", (events.AccountVerified.TYPE,)),
)

_BY_NAME = {spec.name: spec for spec in PLATFORM_QUEUES}


def platform_queue(name: str) -> QueueSpec | None:
    """The table's entry for the queue ``name``, if it has one."""
    return _BY_NAME.get(name)


def queue_spec(name: str, routing_keys: tuple[str, ...]) -> QueueSpec:
    """The spec a consumer declares its queue with: its own bindings, and the table's arguments
    (the defaults for a queue outside the table, such as a test's)."""
    entry = _BY_NAME.get(name)
    if entry is None:
        return QueueSpec(name, routing_keys)
    return QueueSpec(name, routing_keys, delivery_limit=entry.delivery_limit, max_length=entry.max_length)
