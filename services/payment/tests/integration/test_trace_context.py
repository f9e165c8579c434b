"""One trace per order: the bank's callback and the expiry sweep publish in the order's trace.

The trace context of ``order.placed.v1`` is kept with the bill; the events the bill later causes
(``payment.captured.v1`` from the bank's callback, a new HTTP request; ``payment.bill_expired.v1``
from the sweep) carry it in their outbox headers. Bills without one keep the current context.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import pytest
from emeterai_shared.contracts.events import BillExpired, BillIssued, OrderPlaced, PaymentCaptured
from emeterai_shared.messaging import EVENTS
from emeterai_shared.telemetry import setup_tracing
from emeterai_testkit.fixtures import eventually
from payment_service.adapters.banksim import BankSimulator
from payment_service.adapters.snap import PAYMENT_PATH
from payment_service.adapters.snap.signatures import format_snap_timestamp
from payment_service.bootstrap import SERVICE

if TYPE_CHECKING:
    from conftest import Payment

TRACESTATE = "emeterai=order"


@pytest.fixture(autouse=True)
def tracing() -> None:
    """A recording tracer provider in this process, as every service process has."""
    setup_tracing("payment", "test")


def new_traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


def trace_id_of(headers: dict[str, Any] | None) -> str | None:
    traceparent = (headers or {}).get("traceparent")
    return str(traceparent).split("-")[1] if traceparent else None


def customer_no(bill: dict[str, Any], bank: BankSimulator) -> str:
    return str(bill["virtual_account_no"])[len(bank.partner_service_id):]


async def place_traced_order(payment: Payment, traceparent: str) -> dict[str, Any]:
    """``order.placed.v1`` as the order service's relay publishes it, with its trace context."""
    order = OrderPlaced(order_id=uuid4(), account_id=uuid4(), quantity=1, amount=12_500,
                        placed_at=datetime.now(UTC))
    await payment.harness.publisher.publish(
        exchange=EVENTS, routing_key=order.TYPE, body=order.to_json(), message_id=str(uuid4()),
        message_type=order.TYPE, correlation_id=str(order.order_id),
        headers={"traceparent": traceparent, "tracestate": TRACESTATE})
    return dict(await eventually(
        lambda: payment.pool.fetchrow("SELECT * FROM bills WHERE order_id = $1", order.order_id),
        message=f"the bill of order {order.order_id}"))


async def outbox_headers(payment: Payment, message_type: str, order_id: UUID) -> list[dict[str, Any]]:
    rows = await payment.pool.fetch("SELECT headers FROM outbox WHERE message_type = $1 AND correlation_id = $2",
                                    message_type, str(order_id))
    return [dict(r["headers"] or {}) for r in rows]


async def pay(bank: BankSimulator, body: dict[str, Any], traceparent: str | None = None) -> dict[str, Any]:
    """A signed payment flag; ``traceparent``: the bank's own trace context on the callback."""
    if bank.access_token is None:
        await bank.get_token()
    assert bank.access_token is not None
    path, headers, raw = bank.build_signed_request(PAYMENT_PATH, body, access_token=bank.access_token)
    if traceparent is not None:
        headers = {**headers, "traceparent": traceparent}
    _, answer = await bank.send((path, headers, raw))
    return dict(answer)


async def test_the_bill_keeps_the_orders_trace_and_the_capture_continues_it(payment: Payment) -> None:
    traceparent, order_trace = new_traceparent()
    bill = await place_traced_order(payment, traceparent)
    stored = bill["trace_context"]
    assert trace_id_of(stored) == order_trace and stored["tracestate"] == TRACESTATE
    [issued] = await outbox_headers(payment, BillIssued.TYPE, bill["order_id"])
    assert trace_id_of(issued) == order_trace

    bank_traceparent, bank_trace = new_traceparent()
    async with payment.bank() as bank:
        answer = await pay(bank, bank.payment_body(customer_no(bill, bank), 12_500), bank_traceparent)
        assert answer["responseCode"] == "2002500"
    [captured] = await outbox_headers(payment, PaymentCaptured.TYPE, bill["order_id"])
    assert trace_id_of(captured) == order_trace != bank_trace
    assert captured["traceparent"] == stored["traceparent"] and captured["tracestate"] == TRACESTATE


async def test_the_expiry_and_a_late_advice_continue_the_orders_trace(payment: Payment) -> None:
    traceparent, order_trace = new_traceparent()
    bill = await place_traced_order(payment, traceparent)
    await payment.pool.execute("UPDATE bills SET expires_at = now() - interval '10 minutes' WHERE bill_id = $1",
                               bill["bill_id"])
    expires_at = (await payment.bill(bill["bill_id"]))["expires_at"]
    job = next(j for j in SERVICE.periodic if j.name == "expire-bills")
    await job.run(payment.deps)
    [expired] = await outbox_headers(payment, BillExpired.TYPE, bill["order_id"])
    assert trace_id_of(expired) == order_trace

    async with payment.bank() as bank:
        advice = bank.payment_body(customer_no(bill, bank), 12_500, flag_advise="Y")
        advice["trxDateTime"] = format_snap_timestamp(expires_at - timedelta(minutes=1))
        assert (await pay(bank, advice, new_traceparent()[0]))["responseCode"] == "2002500"
    [captured] = await outbox_headers(payment, PaymentCaptured.TYPE, bill["order_id"])
    assert trace_id_of(captured) == order_trace


async def test_a_bill_without_a_stored_context_publishes_in_the_callbacks_trace(payment: Payment) -> None:
    traceparent, order_trace = new_traceparent()
    bill = await place_traced_order(payment, traceparent)
    await payment.pool.execute("UPDATE bills SET trace_context = NULL WHERE bill_id = $1", bill["bill_id"])
    bank_traceparent, bank_trace = new_traceparent()
    async with payment.bank() as bank:
        answer = await pay(bank, bank.payment_body(customer_no(bill, bank), 12_500), bank_traceparent)
        assert answer["responseCode"] == "2002500"
    [captured] = await outbox_headers(payment, PaymentCaptured.TYPE, bill["order_id"])
    assert trace_id_of(captured) == bank_trace != order_trace
