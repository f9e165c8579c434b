"""Serials a PAID order gives back, and waiting for stock (pure: no I/O).

* awaiting stock is recorded once, only on a PAID order, and the status stays PAID;
* serials given back are settled by stamping's answers, possibly in several parts: what was kept
  (already used) stays the buyer's and is not refunded; the rest of the amount is refunded, or,
  with nothing left to refund, the order is FULFILLED with the kept serials;
* a minting failure while serials are being given back waits for the answer before refunding;
* answers that do not apply (serials never given back, an order no longer PAID) decide nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from order_service.domain.order import IllegalTransition, Order, OrderStatus, price

S = OrderStatus


def paid(quantity: int = 2) -> Order:
    return Order(id=uuid.uuid4(), account_id=uuid.uuid4(), quantity=quantity, amount=price(quantity, 2_500),
                 status=S.PAID)


def test_awaiting_stock_is_noted_once_on_a_paid_order() -> None:
    order = paid()
    since = datetime(2024, 9, 3, 15, tzinfo=UTC)
    order.await_stock(since, since + timedelta(hours=2))
    order.await_stock(since, since + timedelta(hours=2))
    assert (order.status, order.awaits_stock, order.awaiting_stock_since) == (S.PAID, True, since)
    assert [(c.old, c.new) for c in order.changes] == [(S.PAID, S.PAID)]
    order.fulfil(["A", "B"])
    assert not order.awaits_stock
    with pytest.raises(IllegalTransition):
        order.await_stock(since, since)


def test_everything_voided_refunds_the_whole_amount() -> None:
    order = paid()
    order.give_back(["X"], "needs 2 serials, got 1")
    assert (order.status, order.giving_back, order.awaits_stock) == (S.PAID, ["X"], False)
    assert order.settle_given_back(["X"], []) == order.amount
    assert (order.status, order.giving_back, order.serials) == (S.REFUND_PENDING, [], [])


def test_answers_in_parts_refund_what_was_not_kept() -> None:
    order = paid(3)
    order.give_back(["A", "B"], "wrong")
    order.give_back(["C", "D"], "wrong again")
    assert order.settle_given_back(["A"], ["B"]) is None  # C and D not answered yet
    assert (order.status, order.giving_back, order.serials) == (S.PAID, ["C", "D"], ["B"])
    assert order.settle_given_back(["ZZ"], []) is None  # not given back: nothing applies
    assert order.settle_given_back(["D"], ["C"]) == order.amount - 2 * order.per_stamp()
    assert (order.status, order.serials) == (S.REFUND_PENDING, ["B", "C"])


def test_everything_kept_fulfils_the_order_with_the_kept_serials() -> None:
    order = paid(2)
    order.give_back(["A", "B", "C"], "three for two")
    assert order.settle_given_back([], ["A", "B", "C"]) == 0
    assert (order.status, order.serials) == (S.FULFILLED, ["A", "B", "C"])


def test_a_minting_failure_while_giving_back_refunds_after_the_answer() -> None:
    order = paid(2)
    order.give_back(["A"], "needs 2 serials, got 1")
    assert order.cannot_fulfil("out of stock until the refund deadline") is False
    assert order.status is S.PAID
    assert order.settle_given_back([], ["A"]) == order.amount - order.per_stamp()
    assert order.status.value == S.REFUND_PENDING  # (mypy keeps the narrowing to PAID across the call)


def test_an_answer_after_the_order_was_fulfilled_decides_nothing() -> None:
    order = paid(2)
    order.give_back(["X"], "one of another order")
    order.fulfil(["A", "B"])  # minting's own serials arrived meanwhile
    assert order.settle_given_back([], ["X"]) is None
    assert (order.status, order.serials, order.giving_back) == (S.FULFILLED, ["A", "B"], [])


def test_only_a_paid_order_gives_back() -> None:
    order = paid()
    order.fulfil(["A", "B"])
    with pytest.raises(IllegalTransition):
        order.give_back(["C"], "late")
