"""Use cases behind the order API (accounts and orders), each inside the caller's unit of work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from emeterai_shared.contracts.events import OrderPlaced
from emeterai_shared.pagination import PageRequest, page_of
from emeterai_shared.uow import UnitOfWork

from order_service.adapters.repository import OrderRepository
from order_service.domain.order import Order, price
from order_service.domain.signin import normalize_phone


async def create_account(uow: UnitOfWork, name: str, phone: str) -> uuid.UUID:
    account_id = uuid.uuid4()
    await OrderRepository(uow.conn).add_account(account_id, name, normalize_phone(phone))
    return account_id


async def place_order(
    uow: UnitOfWork, *, account_id: uuid.UUID, quantity: int, bank: str | None,
    partner_id: str | None, service_fee: int, payment_method: str = "va",
) -> Order:
    order = Order(id=uuid.uuid4(), account_id=account_id, quantity=quantity,
                  amount=price(quantity, service_fee), bank=bank, partner_id=partner_id,
                  payment_method=payment_method)
    await OrderRepository(uow.conn).add_order(order)
    uow.publish(
        OrderPlaced(order_id=order.id, account_id=account_id, quantity=quantity, amount=order.amount,
                    bank=bank, partner_id=partner_id, placed_at=datetime.now(UTC), payment_method=payment_method),
        correlation_id=str(order.id),
    )
    return order


async def order_of(uow: UnitOfWork, account_id: uuid.UUID, order_id: uuid.UUID) -> Order | None:
    """The order ``order_id`` if it belongs to ``account_id`` (another account's order is not found)."""
    order = await OrderRepository(uow.conn).get(order_id)
    return order if order is not None and order.account_id == account_id else None


async def history(uow: UnitOfWork, account_id: uuid.UUID, page: PageRequest) -> tuple[list[Order], str | None]:
    """A page of ``account_id``'s orders, newest first, and the cursor of the next page (None: last)."""
    rows = await OrderRepository(uow.conn).history(account_id, page.after, page.limit + 1)
    entries, cursor = page_of(rows, page.limit, lambda row: row[1])
    return [order for order, _ in entries], cursor
