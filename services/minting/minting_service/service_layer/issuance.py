"""Issuance: a paid order gets exactly ``quantity`` serials, once, or a recorded failure."""

from __future__ import annotations

from datetime import datetime

from emeterai_shared.contracts.events import IssuedSerial, MintingFailed, OrderPaid, SerialsIssued
from emeterai_shared.messaging import PermanentError
from emeterai_shared.uow import UnitOfWork

from minting_service.adapters.repository import MintingRepository
from minting_service.domain.token import StampSigner

OUT_OF_STOCK = "out of stock"


class StockBusy(Exception):
    """Enough stock exists, but concurrent issuances hold part of it: a retry will decide."""


async def issue_serials(uow: UnitOfWork, order: OrderPaid, signer: StampSigner,
                        now: datetime) -> SerialsIssued | MintingFailed | None:
    """Issue the order's serials with their tokens in the caller's transaction and announce them.

    The ``issuances`` row (unique per order) comes first: a redelivered or concurrent ``order.paid``
    finds it and changes nothing (None). With fewer free serials than ordered, nothing is claimed,
    the issuance is FAILED for good and ``minting.failed`` asks for a refund.
    """
    if order.quantity < 1:
        raise PermanentError(f"order {order.order_id} has a non-positive quantity {order.quantity}")
    repo = MintingRepository(uow.conn)
    if not await repo.add_issuance(order):
        return None
    correlation_id = str(order.order_id)
    sns = await repo.claim_stock(order.order_id, order.quantity, now)
    if sns is None:
        if await repo.has_stock(order.quantity):
            raise StockBusy(f"stock for order {order.order_id} is held by concurrent issuances")
        await repo.fail_issuance(order.order_id, OUT_OF_STOCK)
        failed = MintingFailed(order_id=order.order_id, reason=OUT_OF_STOCK, failed_at=now)
        uow.publish(failed, correlation_id=correlation_id)
        return failed
    issued = SerialsIssued(
        order_id=order.order_id, account_id=order.account_id, partner_id=order.partner_id,
        serials=tuple(IssuedSerial(sn=sn, token=signer.sign(sn, order.order_id, now)) for sn in sns),
        issued_at=now,
    )
    uow.publish(issued, correlation_id=correlation_id)
    return issued
