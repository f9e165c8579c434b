"""Stock: serials generated ahead of the rush, so issuing N of them is one UPDATE."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from emeterai_shared.uow import UnitOfWork

from minting_service.adapters.repository import MintingRepository
from minting_service.domain import serial
from minting_service.domain.stamp import VOIDABLE, SerialStatus

BATCH = 20_000


async def add_stock(uow: UnitOfWork, count: int, prefix: str = "",
                    make: Callable[[str], str] = serial.generate) -> int:
    """Generate ``count`` new STOCK serials, inserted batch by batch; returns ``count``.

    A generated serial that already exists (never seen: 87+ random bits) is skipped by the
    primary key and replaced by another in the next batch.
    """
    repo = MintingRepository(uow.conn)
    added = 0
    while added < count:
        added += await repo.add_stock([make(prefix) for _ in range(min(BATCH, count - added))], prefix)
    return added


async def ensure_stock(uow: UnitOfWork, minimum: int, prefix: str = "") -> int:
    """Top the stock up to at least ``minimum``; returns how many serials were added.

    Concurrent runs serialize on an advisory lock, so together they add what one would.
    """
    repo = MintingRepository(uow.conn)
    await repo.lock_stock()
    available = await repo.stock_available()
    return await add_stock(uow, minimum - available, prefix) if available < minimum else 0


async def stock_report(uow: UnitOfWork) -> dict[str, Any]:
    """What is left to issue (in total and by prefix) and what became of the rest."""
    repo = MintingRepository(uow.conn)
    counts = await repo.status_counts()
    by_prefix = await repo.stock_by_prefix()
    waiting, _ = await repo.waiting_stats(datetime.now(UTC))
    return {"available": counts.get("STOCK", 0), "by_prefix": by_prefix,
            **{status.lower(): counts.get(status, 0) for status in ("UNUSED", "STAMPED", "VOID")},
            "orders_awaiting_stock": waiting}


@dataclass(frozen=True)
class StockLevels:
    """What the worker's gauges show."""

    available: int
    """STOCK serials left to issue."""
    waiting: int
    """Paid orders waiting for stock."""
    oldest_wait_s: float
    """How long the oldest of them has waited (0 if none)."""


async def stock_levels(uow: UnitOfWork, now: datetime) -> StockLevels:
    repo = MintingRepository(uow.conn)
    available = await repo.stock_available()
    waiting, oldest_s = await repo.waiting_stats(now)
    return StockLevels(available, waiting, oldest_s)


async def void_serials(uow: UnitOfWork, serials: list[str], reason: str,
                       now: datetime, voidable: tuple[SerialStatus, ...] = VOIDABLE) -> dict[str, Any]:
    """Void serials in a ``voidable`` status (STOCK or UNUSED); the others are listed as refused
    with their status. The operator command voids STOCK only: an issued serial is in a buyer's
    quota at the stamping service, so voiding it here alone would leave the buyer a stamp the
    registry refuses, and no refund; issued serials are voided through their order (stamping
    decides, minting follows, the order refunds: ``stamping.serials_voided.v1``)."""
    repo = MintingRepository(uow.conn)
    voided = await repo.void(serials, reason, now, voidable)
    done = set(voided)
    rest = [sn for sn in dict.fromkeys(serials) if sn not in done]
    found = await repo.statuses(rest)
    refused = {sn: found.get(sn, "UNKNOWN") for sn in rest}
    return {"voided": voided, "refused": refused}
