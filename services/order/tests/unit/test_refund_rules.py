"""The rules of a buyer's refund of unused stamps (``domain.refund``), without servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from order_service.domain import partner_events
from order_service.domain.order import Order, OrderStatus, price
from order_service.domain.refund import NothingToRefund, Refund, RefundStateError, RefundStatus, refundable

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def fulfilled(serials: list[str], fee: int = 2_500) -> Order:
    return Order(id=uuid.uuid4(), account_id=uuid.uuid4(), quantity=len(serials), amount=price(len(serials), fee),
                 status=OrderStatus.FULFILLED, serials=list(serials))


def refund_of(order: Order, requested: list[str]) -> Refund:
    return Refund(refund_id=uuid.uuid4(), order_id=order.id, requested=requested, requested_at=NOW)


def test_only_a_fulfilled_order_refunds() -> None:
    order = fulfilled(["A", "B"])
    order.status = OrderStatus.PAID
    with pytest.raises(NothingToRefund):
        refundable(order, [], [])


def test_asks_for_the_serials_not_known_to_be_used_nor_refunded() -> None:
    order = fulfilled(["A", "B", "C", "D"])
    assert refundable(order, ["A"], []) == ["B", "C", "D"]
    pending = refund_of(order, ["B"])
    assert refundable(order, ["A"], [pending]) == ["C", "D"]  # B is being refunded


def test_a_kept_serial_may_be_asked_for_again_a_voided_one_never() -> None:
    order = fulfilled(["A", "B"])
    first = refund_of(order, ["A", "B"])
    first.settle(voided=["A"], kept=["B"], per_stamp=order.per_stamp(), at=NOW)
    assert refundable(order, [], [first]) == ["B"]  # B was in use; a failed stamping frees it again
    with pytest.raises(NothingToRefund):
        refundable(order, ["B"], [first])


def test_the_amount_is_the_per_stamp_price_of_the_voided_ones_fee_included() -> None:
    order = fulfilled(["A", "B", "C"])
    refund = refund_of(order, ["B", "C"])
    assert refund.settle(voided=["B", "C", "Z"], kept=[], per_stamp=order.per_stamp(), at=NOW) == 2 * 12_500
    assert (refund.status, refund.serials, refund.kept) == (RefundStatus.PAYING, ["B", "C"], [])
    with pytest.raises(RefundStateError):
        refund.settle(voided=["B"], kept=[], per_stamp=order.per_stamp(), at=NOW)


def test_nothing_voided_is_nothing_to_pay() -> None:
    order = fulfilled(["A"])
    refund = refund_of(order, ["A"])
    assert refund.settle(voided=[], kept=["A"], per_stamp=order.per_stamp(), at=NOW) == 0
    assert (refund.status, refund.serials, refund.kept) == (RefundStatus.NOTHING, [], ["A"])
    with pytest.raises(RefundStateError):
        refund.paid_out("REF", NOW)


def test_paid_out_once() -> None:
    order = fulfilled(["A"])
    refund = refund_of(order, ["A"])
    refund.settle(voided=["A"], kept=[], per_stamp=order.per_stamp(), at=NOW)
    assert refund.paid_out("REF-1", NOW) is True
    assert refund.paid_out("REF-1", NOW) is False
    assert (refund.status, refund.payout_reference) == (RefundStatus.PAID_OUT, "REF-1")


def test_order_refunded_event_has_one_id_per_refund() -> None:
    order_id, refund_id = uuid.uuid4(), uuid.uuid4()
    first = partner_events.order_refunded(order_id=order_id, refund_id=refund_id, serials=["A"], amount=12_500,
                                          at=NOW)
    again = partner_events.order_refunded(order_id=order_id, refund_id=refund_id, serials=["A"], amount=12_500,
                                          at=NOW)
    assert first.event_id == again.event_id and first.type == "order.refunded"
    assert first.body()["data"] == {"order_id": str(order_id), "refund_id": str(refund_id), "serials": ["A"],
                                    "amount": 12_500}
