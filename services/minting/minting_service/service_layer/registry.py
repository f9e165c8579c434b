"""The stamp registry: uses reported by the stamping service, applied once, reuse refused."""

from __future__ import annotations

from datetime import datetime

from emeterai_shared.contracts.events import DocumentStamped, SerialsVoided
from emeterai_shared.messaging import PermanentError
from emeterai_shared.uow import UnitOfWork

from minting_service.adapters.repository import MintingRepository
from minting_service.domain.stamp import Stamp, UseOutcome, given_back_reason, is_sha256_hex


async def public_stamp(uow: UnitOfWork, sn: str) -> Stamp | None:
    """The registry entry of ``sn`` as the public sees it: None for stock and unknown serials."""
    stamp = await MintingRepository(uow.conn).stamp(sn)
    return stamp if stamp is not None and stamp.is_public else None


async def record_use(uow: UnitOfWork, event: DocumentStamped) -> tuple[UseOutcome, Stamp | None]:
    """Apply a stamped document to its serial; returns the outcome and the serial as found.

    A refused use (the serial is stamped by another stamping, void, not issued or unknown) changes
    no serial and is recorded once per (serial, stamping) in ``reuse_attempts``; recorded before,
    it is REPEATED.
    """
    document_sha256 = event.document_sha256.lower()
    if not is_sha256_hex(document_sha256):
        raise PermanentError(f"stamping {event.stamping_id}: document_sha256 is not a SHA-256 in hex")
    repo = MintingRepository(uow.conn)
    stamp = await repo.stamp(event.sn, lock=True)
    outcome = stamp.use(event.stamping_id, document_sha256, event.stamped_at) if stamp else UseOutcome.REFUSED
    if outcome is UseOutcome.APPLIED:
        assert stamp is not None
        await repo.save_used(stamp)
    elif outcome is UseOutcome.REFUSED and not await repo.add_reuse_attempt(event, stamp):
        outcome = UseOutcome.REPEATED
    return outcome, stamp


async def void_given_back(uow: UnitOfWork, event: SerialsVoided, now: datetime) -> list[str]:
    """Make VOID the serials stamping took out of the order's quota for good (its decision is
    final: a serial it voided can no longer be used); only UNUSED serials of that very order
    change, so a serial of another order named by mistake is left alone. Returns those voided now
    (a redelivery voids nothing more)."""
    if not event.voided:
        return []
    repo = MintingRepository(uow.conn)
    return await repo.void_of_order(event.order_id, list(event.voided), given_back_reason(event.reason), now)
