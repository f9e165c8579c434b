"""Use cases behind the order API (accounts and orders), each inside the caller's unit of work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from emeterai_shared.contracts.events import OrderPlaced
from emeterai_shared.idempotency import Claim
from emeterai_shared.pagination import PageRequest, page_of
from emeterai_shared.uow import UnitOfWork

from order_service.adapters.repository import OrderRepository
from order_service.domain.order import Order, price
from order_service.domain.refund import Refund
from order_service.domain.signin import normalize_phone


async def create_account(uow: UnitOfWork, name: str, phone: str) -> uuid.UUID:
    account_id = uuid.uuid4()
    await OrderRepository(uow.conn).add_account(account_id, name, normalize_phone(phone))
    return account_id


def new_order(*, account_id: uuid.UUID, quantity: int, bank: str | None, partner_id: str | None,
              service_fee: int, payment_method: str = "va") -> Order:
    """The order a buyer asks for, not yet placed: its id and amount are known before any write
    (``POST /v1/orders`` stores its answer with the idempotency key)."""
    return Order(id=uuid.uuid4(), account_id=account_id, quantity=quantity, amount=price(quantity, service_fee),
                 bank=bank, partner_id=partner_id, payment_method=payment_method)


def _announce(uow: UnitOfWork, order: Order) -> None:
    """``order.placed`` for the payment service (which bills the order)."""
    uow.publish(
        OrderPlaced(order_id=order.id, account_id=order.account_id, quantity=order.quantity, amount=order.amount,
                    bank=order.bank, partner_id=order.partner_id, placed_at=datetime.now(UTC),
                    payment_method=order.payment_method),
        correlation_id=str(order.id),
    )


async def add_order(uow: UnitOfWork, order: Order) -> Order:
    """Place ``order`` (``new_order``): the order with its history, and ``order.placed``."""
    await OrderRepository(uow.conn).add_order(order)
    _announce(uow, order)
    return order


async def place_order_once(uow: UnitOfWork, order: Order, claim: Claim) -> bool:
    """``add_order`` under an idempotency ``claim``, in one statement on ``uow``'s connection, which
    needs no transaction (``OrderRepository.add_order_once``). False: the key was claimed already
    and nothing was written (its first answer is ``idempotency.stored``)."""
    _announce(uow, order)
    return await OrderRepository(uow.conn).add_order_once(order, claim, uow.take())


async def place_order(
    uow: UnitOfWork, *, account_id: uuid.UUID, quantity: int, bank: str | None,
    partner_id: str | None, service_fee: int, payment_method: str = "va",
) -> Order:
    return await add_order(uow, new_order(account_id=account_id, quantity=quantity, bank=bank, partner_id=partner_id,
                                          service_fee=service_fee, payment_method=payment_method))


async def order_of(uow: UnitOfWork, account_id: uuid.UUID, order_id: uuid.UUID) -> Order | None:
    """The order ``order_id`` if it belongs to ``account_id`` (another account's order is not found)."""
    order = await OrderRepository(uow.conn).get(order_id)
    return order if order is not None and order.account_id == account_id else None


async def order_view(uow: UnitOfWork, account_id: uuid.UUID,
                     order_id: uuid.UUID) -> tuple[Order, list[Refund], str] | None:
    """``order_of`` with the order's refunds (none before it is paid) and the tag of its view
    (``OrderRepository.view_tag``), in one round trip."""
    found = await OrderRepository(uow.conn).get_with_refunds(order_id)
    return found if found is not None and found[0].account_id == account_id else None


async def history(uow: UnitOfWork, account_id: uuid.UUID, page: PageRequest) -> tuple[list[Order], str | None]:
    """A page of ``account_id``'s orders, newest first, and the cursor of the next page (None: last)."""
    rows = await OrderRepository(uow.conn).history(account_id, page.after, page.limit + 1)
    entries, cursor = page_of(rows, page.limit, lambda row: row[1])
    return [order for order, _ in entries], cursor
