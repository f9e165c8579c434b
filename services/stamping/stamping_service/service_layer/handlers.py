"""The stamping service's message handlers: the quota projection fed by minting's events, and the
stamping jobs its own api queues (``entrypoints.messages`` lists their queues)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from emeterai_shared.contracts.events import AccountVerified, SerialsIssued, SerialsVoided, SerialsVoidRequested
from emeterai_shared.messaging import Envelope, PermanentError
from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.accounts import VerifiedAccounts
from stamping_service.adapters.quota import QuotaRepository
from stamping_service.domain.contracts import StampingJobQueued
from stamping_service.service_layer.stamper import Stamper

log = logging.getLogger(__name__)


async def on_serials_issued(uow: UnitOfWork, env: Envelope[SerialsIssued]) -> None:
    """The order's serials become UNUSED stamps of its account; a redelivery changes nothing.

    A serial already owned by another account contradicts minting (a serial is issued once): the
    message parks and nothing of it is applied.
    """
    event = env.body
    repo = QuotaRepository(uow.conn)
    added = await repo.add_serials(event.account_id, event.order_id, event.serials)
    if added < len(event.serials):
        owners = await repo.owners([s.sn for s in event.serials])
        foreign = sorted(sn for sn, owner in owners.items() if owner != event.account_id)
        if foreign:
            raise PermanentError(f"order {event.order_id}: serial(s) {', '.join(foreign[:5])} already belong "
                                 f"to another account")
    log.info("order %s: %d serial(s) added to account %s (%d already known)", event.order_id, added,
             event.account_id, len(event.serials) - added)


async def on_serials_void_requested(uow: UnitOfWork, env: Envelope[SerialsVoidRequested]) -> None:
    """An order gives serials back: this service decides, because a stamp is used here. UNUSED
    ones leave the quota (VOID), those a stamping holds or used are kept; the answer
    (``stamping.serials_voided.v1``) makes minting void them in the registry and the order refund
    them. Used by orders that cannot accept their serials and by refunds of unused stamps alike."""
    event = env.body
    now = datetime.now(UTC)
    voided, kept = await QuotaRepository(uow.conn).void(event.order_id, event.account_id, event.serials, now)
    uow.publish(SerialsVoided(order_id=event.order_id, account_id=event.account_id, voided=tuple(voided),
                              kept=tuple(kept), reason=event.reason, voided_at=now, refund_id=event.refund_id),
                correlation_id=str(event.order_id))
    log.warning("order %s gave back %d serial(s): %d voided, %d kept (in use): %s", event.order_id,
                len(event.serials), len(voided), len(kept), event.reason)


async def on_job_queued(uow: UnitOfWork, env: Envelope[StampingJobQueued], stamper: Stamper) -> None:
    """Stamp the job (``Stamper.stamp``): once, whatever the number of deliveries."""
    await stamper.stamp(uow, env.body.stamping_id)


async def on_account_verified(uow: UnitOfWork, env: Envelope[AccountVerified]) -> None:
    """The account's phone was verified by a sign-in: its tokens without a session are refused
    from now on (``service_layer.accounts.ensure_current``)."""
    await VerifiedAccounts(uow.conn).add(env.body.account_id, env.body.verified_at)
