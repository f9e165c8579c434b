"""Issuance: a paid order gets exactly ``quantity`` serials, once, or a recorded failure.

Too little free stock is a state, not an error: the issuance WAITS (``minting.stock_awaited.v1``
tells the order, whose view shows it) until ``serve_waiting`` (a periodic job of the worker)
issues its serials, oldest order first, or fails it with ``minting.failed.v1`` (the order is
refunded) once its ``refund_at`` (``MINTING_STOCK_WAIT_S`` after it started waiting) has passed.
Stock that exists but is held by concurrent issuances and stock that is missing are treated
alike: both wait, because both usually end soon (an issuance commits, an operator runs
``stock ensure``), and a refund during a rush for a gap of minutes is what buyers resent most.
With ``MINTING_STOCK_WAIT_S=0`` an order finding too little stock fails at once, as it used to.
Nothing about stock is retried through the delay tiers, so nothing parks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from emeterai_shared.contracts.events import (
    CapturedPayment,
    IssuedSerial,
    MintingFailed,
    OrderPaid,
    SerialsIssued,
    StockAwaited,
)
from emeterai_shared.messaging import PermanentError
from emeterai_shared.uow import UnitOfWork

from minting_service.adapters.repository import MintingRepository
from minting_service.domain.issuance import OUT_OF_STOCK, WAIT_OVER, refund_deadline
from minting_service.domain.token import StampSigner


async def issue_serials(uow: UnitOfWork, order: OrderPaid, signer: StampSigner, now: datetime,
                        stock_wait_s: float = 0.0, *, payment: CapturedPayment | None = None,
                        ) -> SerialsIssued | MintingFailed | StockAwaited | None:
    """Issue the order's serials with their tokens in the caller's transaction and announce them.

    The ``issuances`` row (unique per order) comes first: a redelivered or concurrent ``order.paid``
    (or ``payment.captured``) finds it and changes nothing (None). ``payment``, the capture this
    answers (when it came as ``payment.captured``), goes out with the answer. While other paid
    orders wait for stock this one queues behind them (first paid, first served); with fewer free
    serials than ordered nothing is claimed and the issuance WAITS until ``now + stock_wait_s``
    (or, with no wait allowed, is FAILED for good and ``minting.failed`` asks for a refund).
    """
    if order.quantity < 1:
        raise PermanentError(f"order {order.order_id} has a non-positive quantity {order.quantity}")
    repo = MintingRepository(uow.conn)
    added, sns = await repo.start_issuance(order, now)
    if not added:
        return None
    correlation_id = str(order.order_id)
    if sns is not None:
        issued = _issued(order.order_id, order.account_id, order.partner_id, sns, signer, now, payment)
        uow.publish(issued, correlation_id=correlation_id)
        return issued
    refund_at = refund_deadline(now, stock_wait_s)
    if refund_at is None:
        await repo.fail_issuance(order.order_id, OUT_OF_STOCK, now)
        failed = MintingFailed(order_id=order.order_id, reason=OUT_OF_STOCK, failed_at=now, payment=payment)
        uow.publish(failed, correlation_id=correlation_id)
        return failed
    await repo.wait_issuance(order.order_id, now, refund_at)
    awaited = StockAwaited(order_id=order.order_id, quantity=order.quantity, since=now, refund_at=refund_at,
                           payment=payment)
    uow.publish(awaited, correlation_id=correlation_id)
    return awaited


def _issued(order_id: UUID, account_id: UUID, partner_id: str | None, sns: list[str], signer: StampSigner,
            now: datetime, payment: CapturedPayment | None = None) -> SerialsIssued:
    return SerialsIssued(
        order_id=order_id, account_id=account_id, partner_id=partner_id,
        serials=tuple(IssuedSerial(sn=sn, token=signer.sign(sn, order_id, now)) for sn in sns),
        issued_at=now, payment=payment,
    )


@dataclass
class Served:
    """What one ``serve_waiting`` pass decided."""

    issued: list[SerialsIssued] = field(default_factory=list)
    failed: list[MintingFailed] = field(default_factory=list)
    still_waiting: bool = False
    busy: bool = False
    """Another process was serving the queue: this pass did nothing."""


async def serve_waiting(uow: UnitOfWork, signer: StampSigner, now: datetime, limit: int = 200) -> Served:
    """One pass over the waiting issuances, in the caller's transaction.

    First every issuance whose ``refund_at`` is not after ``now`` is FAILED with
    ``minting.failed.v1`` (the order refunds it); then the others are served oldest first, each
    with its whole quantity, stopping at the first that does not fit in the free stock (younger
    orders do not overtake it). Passes of several workers serialize on an advisory lock; the one
    that does not get it does nothing this time.
    """
    served = Served()
    repo = MintingRepository(uow.conn)
    if not await repo.try_lock_waiting():
        served.busy = True
        return served
    for row in await repo.waiting(limit, due_before=now):
        await repo.fail_issuance(row["order_id"], WAIT_OVER, now)
        failed = MintingFailed(order_id=row["order_id"], reason=WAIT_OVER, failed_at=now)
        uow.publish(failed, correlation_id=str(row["order_id"]))
        served.failed.append(failed)
    for row in await repo.waiting(limit):
        sns = await repo.claim_stock(row["order_id"], row["quantity"], now)
        if sns is None:
            served.still_waiting = True
            break
        await repo.issued_after_waiting(row["order_id"], now)
        issued = _issued(row["order_id"], row["account_id"], row["partner_id"], sns, signer, now)
        uow.publish(issued, correlation_id=str(row["order_id"]))
        served.issued.append(issued)
    return served


async def waiting_orders(uow: UnitOfWork) -> list[dict[str, Any]]:
    """The paid orders waiting for stock, oldest first (order, account, quantity, since, refund at)."""
    return [dict(row) for row in await MintingRepository(uow.conn).waiting_orders(None)]


async def refund_waiting(uow: UnitOfWork, order_ids: list[UUID] | None, reason: str, now: datetime) -> list[UUID]:
    """An operator's early refund of orders waiting for stock (all of them with None): each
    issuance FAILED with one ``minting.failed.v1``, as at its deadline. Minting decides alone
    whether an order gets serials or a refund, so an order refunded here can never get serials
    too. Returns the orders refunded (an order no longer waiting is left as it is)."""
    repo = MintingRepository(uow.conn)
    await repo.lock_waiting()  # not while a pass serves them
    rows = await repo.waiting_orders(order_ids)
    for row in rows:
        await repo.fail_issuance(row["order_id"], reason, now)
        uow.publish(MintingFailed(order_id=row["order_id"], reason=reason, failed_at=now),
                    correlation_id=str(row["order_id"]))
    return [row["order_id"] for row in rows]
