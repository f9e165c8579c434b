"""The partners' event feed and, for operators, its webhook deliveries (each in a unit of work)."""

from __future__ import annotations

from typing import Any

from emeterai_shared.uow import UnitOfWork

from order_service.adapters.partner_store import PartnerEventRepository
from order_service.domain.delivery import DeliveryStatus
from order_service.domain.partner_events import PartnerEvent


async def feed(uow: UnitOfWork, partner_id: str, after: int, limit: int) -> list[tuple[int, PartnerEvent]]:
    """The partner's events after cursor ``after``, oldest first, with their cursors."""
    return await PartnerEventRepository(uow.conn).feed(partner_id, after, limit)


async def deliveries(uow: UnitOfWork, *, partner_id: str | None, status: DeliveryStatus | None,
                     limit: int) -> list[dict[str, Any]]:
    """Webhook deliveries, newest first."""
    return await PartnerEventRepository(uow.conn).deliveries(partner_id=partner_id, status=status, limit=limit)


async def attempts(uow: UnitOfWork, delivery_id: int) -> list[dict[str, Any]]:
    """Every attempt of one delivery, in order."""
    return await PartnerEventRepository(uow.conn).attempts(delivery_id)


async def resend(uow: UnitOfWork, ids: list[int]) -> list[int]:
    """Make deliveries due now, whatever their status; returns the ids that exist."""
    return await PartnerEventRepository(uow.conn).resend(ids)
