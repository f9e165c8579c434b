"""Message handlers of the payment service: each applies one use case in the consumer's unit of work.

Parameters after the unit of work and the envelope name what the worker injects from
``PaymentDeps`` (``entrypoints.messages``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from emeterai_shared.contracts.events import OrderPlaced, OrderRefundRequested, PartialRefundRequested
from emeterai_shared.messaging import Envelope
from emeterai_shared.telemetry import inject_context, trace_headers_of
from emeterai_shared.uow import UnitOfWork

from payment_service.adapters.acquirers import AcquirerRegistry
from payment_service.adapters.banks import BankRegistry
from payment_service.config import PaymentSettings
from payment_service.metrics import PAYMENTS_REFUNDED
from payment_service.service_layer.billing import issue_bill
from payment_service.service_layer.refunds import record_partial_refund, record_refund


async def on_order_placed(uow: UnitOfWork, env: Envelope[OrderPlaced], banks: BankRegistry,
                          acquirers: AcquirerRegistry, settings: PaymentSettings) -> None:
    # The order's trace, as this message carries it (through this consumer's span when one is
    # recording), is kept with the bill: the bank's callback continues it (one trace per order).
    trace_context = trace_headers_of(inject_context({})) or trace_headers_of(env.headers)
    await issue_bill(uow, banks, env.body, timedelta(seconds=settings.bill_expiry_s), datetime.now(UTC),
                     trace_context, acquirers=acquirers, qris_validity=timedelta(seconds=settings.qris_validity_s))


async def on_order_refund_requested(uow: UnitOfWork, env: Envelope[OrderRefundRequested]) -> None:
    if await record_refund(uow, env.body, datetime.now(UTC)):
        PAYMENTS_REFUNDED.inc()


async def on_partial_refund_requested(uow: UnitOfWork, env: Envelope[PartialRefundRequested]) -> None:
    """Recorded to pay out; the worker's payout job pays it (``refunds.pay_out_due``)."""
    if await record_partial_refund(uow, env.body, datetime.now(UTC)):
        PAYMENTS_REFUNDED.inc()
