"""Reconcile a bank's settlement list with the payments we captured from that bank, or a QRIS
acquirer's with the QRIS payments we captured through it and the refunds it made for us."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emeterai_shared.uow import UnitOfWork

from payment_service.adapters.qris_store import QrisStore
from payment_service.adapters.repository import PaymentRepository
from payment_service.adapters.settlement import Format, read_acquirer_settlement, read_settlement
from payment_service.domain.reconciliation import Window, reconcile


async def reconcile_file(uow: UnitOfWork, client_id: str, path: Path, fmt: Format) -> dict[str, Any]:
    """The report: matched, missing on either side, amount mismatches (counts and ids)."""
    lines = read_settlement(path, fmt)
    window = Window.of(lines)
    ours = await PaymentRepository(uow.conn).settled_payments(
        client_id, [line.payment_request_id for line in lines], window
    )
    return {"bank": client_id, "file": str(path), **reconcile(lines, ours, window)}


async def reconcile_acquirer_file(uow: UnitOfWork, acquirer_id: str, path: Path, fmt: Format) -> dict[str, Any]:
    """The same report for a QRIS acquirer, payments compared by its ``referenceNo`` (a line may name
    the RRN instead), plus ``refunds``: the same report of its refunds by ``refundNo``."""
    payments, refunds = read_acquirer_settlement(path, fmt)
    window = Window.of([*payments, *refunds])
    store = QrisStore(uow.conn)
    ours = await store.settled_payments(
        acquirer_id, sorted({i for line in payments for i in (line.payment_request_id, line.alias) if i}), window)
    our_refunds = await store.settled_refunds(acquirer_id, [line.payment_request_id for line in refunds], window)
    return {"acquirer": acquirer_id, "file": str(path), **reconcile(payments, ours, window, key="referenceNo"),
            "refunds": reconcile(refunds, our_refunds, window, key="refundNo")}
