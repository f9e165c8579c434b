"""The order aggregate's state machine, exhaustively, with explicit tables (pure: no I/O).

* every legal transition works through the public method that performs it and is recorded once
  in ``changes`` with its reason;
* every pair of statuses outside ``TRANSITIONS`` (including staying put) is refused with
  ``IllegalTransition`` and leaves the order exactly as it was;
* capture, fail, fulfil and price keep their documented rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from order_service.domain.order import (
    DUTY_PER_STAMP,
    TRANSITIONS,
    Bill,
    IllegalTransition,
    Order,
    OrderStatus,
    Transition,
    price,
)

S = OrderStatus
QUANTITY = 3
PAYMENT = uuid.UUID("00000000-0000-4000-8000-000000000001")
SERIALS = ["SN-0001", "SN-0002", "SN-0003"]


def order_in(status: OrderStatus) -> Order:
    return Order(id=uuid.uuid4(), account_id=uuid.uuid4(), quantity=QUANTITY,
                 amount=price(QUANTITY, 2_500), status=status)


def snapshot(order: Order) -> Order:
    return replace(order, serials=list(order.serials), changes=list(order.changes))


Action = Callable[[Order], object]

# The written-out table of the state machine: (from, to, public action, recorded reason).
LEGAL: list[tuple[OrderStatus, OrderStatus, Action, str]] = [
    (S.AWAITING_PAYMENT, S.PAID, lambda o: o.capture(PAYMENT, late=False), "payment captured"),
    (S.AWAITING_PAYMENT, S.EXPIRED, lambda o: o.expire(), "bill expired unpaid"),
    (S.AWAITING_PAYMENT, S.FAILED, lambda o: o.fail("no such bank"), "no such bank"),
    (S.PAID, S.FULFILLED, lambda o: o.fulfil(SERIALS), "serials issued"),
    (S.PAID, S.REFUND_PENDING, lambda o: o.request_refund("out of stock"), "out of stock"),
    (S.EXPIRED, S.REFUND_PENDING, lambda o: o.request_refund("paid late"), "paid late"),
    (S.REFUND_PENDING, S.REFUNDED, lambda o: o.refunded(), "refund recorded"),
]

ALL_PAIRS = [(a, b) for a in S for b in S]
ILLEGAL = [(a, b) for a, b in ALL_PAIRS if b not in TRANSITIONS[a]]

# The public method that tries to move an order to each status (none leads to AWAITING_PAYMENT).
TOWARDS: dict[OrderStatus, Action] = {
    S.PAID: lambda o: o.capture(PAYMENT, late=False),
    S.FULFILLED: lambda o: o.fulfil(SERIALS),
    S.EXPIRED: lambda o: o.expire(),
    S.REFUND_PENDING: lambda o: o.request_refund("a reason"),
    S.REFUNDED: lambda o: o.refunded(),
    S.FAILED: lambda o: o.fail("a reason"),
}
# capture() on an EXPIRED order is the legal late-payment refund, not an attempt to become PAID.
ILLEGAL_BY_METHOD = [(a, b) for a, b in ILLEGAL if b in TOWARDS and (a, b) != (S.EXPIRED, S.PAID)]


def test_the_table_is_the_documented_state_machine() -> None:
    assert {(a, b) for a, b, _, _ in LEGAL} == {(a, b) for a in S for b in TRANSITIONS[a]}
    assert len(LEGAL) == 7
    assert len(ILLEGAL) == 49 - 7
    for status in (S.FULFILLED, S.REFUNDED, S.FAILED):
        assert TRANSITIONS[status] == frozenset()


@pytest.mark.parametrize(("old", "new", "action", "reason"), LEGAL,
                         ids=[f"{a}->{b}" for a, b, _, _ in LEGAL])
def test_legal_transition_is_applied_and_recorded(
    old: OrderStatus, new: OrderStatus, action: Action, reason: str
) -> None:
    order = order_in(old)
    assert order.can_become(new)
    action(order)
    assert order.status is new
    assert order.changes == [Transition(old, new, reason)]


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_can_become_matches_the_table(old: OrderStatus, new: OrderStatus) -> None:
    assert order_in(old).can_become(new) is (new in TRANSITIONS[old])


@pytest.mark.parametrize(("old", "new"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_every_illegal_transition_is_refused_by_the_guard(old: OrderStatus, new: OrderStatus) -> None:
    order = order_in(old)
    before = snapshot(order)
    with pytest.raises(IllegalTransition) as info:
        order._move(new, "attempt")
    assert (info.value.current, info.value.wanted) == (old, new)
    assert str(order.id) in str(info.value)
    assert order == before
    assert order.changes == []


@pytest.mark.parametrize(("old", "new"), ILLEGAL_BY_METHOD, ids=[f"{a}->{b}" for a, b in ILLEGAL_BY_METHOD])
def test_every_illegal_transition_is_refused_by_the_public_method(old: OrderStatus, new: OrderStatus) -> None:
    order = order_in(old)
    before = snapshot(order)
    with pytest.raises(IllegalTransition) as info:
        TOWARDS[new](order)
    assert info.value.current is old
    assert order == before  # status, payment id, failure reason, serials and changes untouched
    assert order.status is old


@pytest.mark.parametrize("reason", ["", None])
def test_failed_requires_a_reason(reason: str | None) -> None:
    order = order_in(S.AWAITING_PAYMENT)
    with pytest.raises(ValueError, match="reason"):
        order.fail(reason)  # type: ignore[arg-type,unused-ignore]
    assert order.status is S.AWAITING_PAYMENT
    assert order.failure_reason is None
    assert order.changes == []


def test_failed_records_its_reason() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    order.fail("unknown bank 'x'")
    assert order.status is S.FAILED
    assert order.failure_reason == "unknown bank 'x'"


def test_capture_on_time_pays() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    assert order.capture(PAYMENT, late=False) is True
    assert order.status is S.PAID
    assert order.payment_id == PAYMENT
    assert order.failure_reason is None
    assert order.changes == [Transition(S.AWAITING_PAYMENT, S.PAID, "payment captured")]


def test_late_capture_on_an_awaiting_order_expires_it_then_asks_for_a_refund() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    assert order.capture(PAYMENT, late=True) is False
    assert order.status is S.REFUND_PENDING
    assert order.payment_id == PAYMENT
    assert order.failure_reason == "paid after the order expired"
    assert order.changes == [
        Transition(S.AWAITING_PAYMENT, S.EXPIRED, "bill expired unpaid"),
        Transition(S.EXPIRED, S.REFUND_PENDING, "paid after the order expired"),
    ]


@pytest.mark.parametrize("late", [False, True])
def test_capture_on_an_expired_order_asks_for_a_refund(late: bool) -> None:
    order = order_in(S.EXPIRED)
    assert order.capture(PAYMENT, late=late) is False
    assert order.status is S.REFUND_PENDING
    assert order.payment_id == PAYMENT
    assert order.failure_reason == "paid after the order expired"
    assert order.changes == [Transition(S.EXPIRED, S.REFUND_PENDING, "paid after the order expired")]


@pytest.mark.parametrize("status", [S.PAID, S.FULFILLED, S.REFUND_PENDING, S.REFUNDED, S.FAILED])
@pytest.mark.parametrize("late", [False, True])
def test_capture_where_no_payment_fits_is_refused_and_changes_nothing(status: OrderStatus, late: bool) -> None:
    order = order_in(status)
    before = snapshot(order)
    with pytest.raises(IllegalTransition):
        order.capture(PAYMENT, late=late)
    assert order == before
    assert order.payment_id is None


@pytest.mark.parametrize("count", [0, 1, QUANTITY - 1, QUANTITY + 1, 10])
def test_fulfil_needs_exactly_quantity_serials(count: int) -> None:
    order = order_in(S.PAID)
    with pytest.raises(ValueError, match=f"needs {QUANTITY} serials, got {count}"):
        order.fulfil([f"SN-{i}" for i in range(count)])
    assert order.status is S.PAID
    assert order.serials == []
    assert order.changes == []


def test_fulfil_keeps_a_copy_of_the_serials() -> None:
    order = order_in(S.PAID)
    serials = list(SERIALS)
    order.fulfil(serials)
    serials.append("SN-9999")
    assert order.status is S.FULFILLED
    assert order.serials == SERIALS


def test_attach_bill_keeps_the_status() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    bill = Bill("8808123456789012", 37_500, datetime(2030, 1, 1, tzinfo=UTC))
    order.attach_bill(bill)
    assert order.bill == bill
    assert order.status is S.AWAITING_PAYMENT
    assert order.changes == []


def test_a_new_order_awaits_payment() -> None:
    order = Order(id=uuid.uuid4(), account_id=uuid.uuid4(), quantity=1, amount=12_500)
    assert order.status is S.AWAITING_PAYMENT
    assert (order.bill, order.payment_id, order.failure_reason, order.serials, order.changes) == (
        None, None, None, [], [])


@pytest.mark.parametrize(
    ("quantity", "fee", "amount"),
    [
        (1, 2_500, 12_500),
        (2, 2_500, 25_000),
        (3, 2_500, 37_500),
        (100, 2_500, 1_250_000),
        (5_000, 2_500, 62_500_000),
        (1, 0, 10_000),
        (7, 1_000, 77_000),
    ],
)
def test_price_is_quantity_times_duty_plus_fee(quantity: int, fee: int, amount: int) -> None:
    assert DUTY_PER_STAMP == 10_000
    assert price(quantity, fee) == amount


@pytest.mark.parametrize("quantity", [0, -1, -100])
def test_price_refuses_less_than_one_stamp(quantity: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        price(quantity, 2_500)
