"""Reconcile a bank's settlement list with the payments we captured from that bank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emeterai_shared.uow import UnitOfWork

from payment_service.adapters.repository import PaymentRepository
from payment_service.adapters.settlement import Format, read_settlement
from payment_service.domain.reconciliation import Window, reconcile


async def reconcile_file(uow: UnitOfWork, client_id: str, path: Path, fmt: Format) -> dict[str, Any]:
    """The report: matched, missing on either side, amount mismatches (counts and ids)."""
    lines = read_settlement(path, fmt)
    window = Window.of(lines)
    ours = await PaymentRepository(uow.conn).settled_payments(
        client_id, [line.payment_request_id for line in lines], window
    )
    return {"bank": client_id, "file": str(path), **reconcile(lines, ours, window)}
