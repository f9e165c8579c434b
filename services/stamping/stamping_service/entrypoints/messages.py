"""The stamping service's subscriptions: the quota projection fed by minting's events, and the
stamping jobs its own api queues."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from emeterai_shared.contracts.events import SerialsIssued, SerialsVoided, SerialsVoidRequested
from emeterai_shared.messaging import Envelope, PermanentError, Subscription
from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.quota import QuotaRepository
from stamping_service.config import StampingSettings
from stamping_service.messages import StampingJobQueued
from stamping_service.service_layer.stamper import Stamper

log = logging.getLogger(__name__)

ON_SERIALS_ISSUED = "stamping.on_serials_issued"
ON_JOB_QUEUED = "stamping.on_job_queued"
ON_SERIALS_VOID_REQUESTED = "stamping.on_serials_void_requested"


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
                              kept=tuple(kept), reason=event.reason, voided_at=now),
                correlation_id=str(event.order_id))
    log.warning("order %s gave back %d serial(s): %d voided, %d kept (in use): %s", event.order_id,
                len(event.serials), len(voided), len(kept), event.reason)


def subscriptions(settings: StampingSettings, stamper: Callable[[], Stamper]) -> list[Subscription]:
    """``stamper`` is called at the first job, so that listing subscriptions starts no process.

    Jobs are taken one per transaction (a transaction never waits on another job's signature),
    ``job_concurrency`` at a time, and a worker holds only ``job_prefetch`` of them, so that a
    backlog spreads over every worker process instead of waiting in one's buffer."""

    async def on_job_queued(uow: UnitOfWork, env: Envelope[StampingJobQueued]) -> None:
        await stamper().stamp(uow, env.body.stamping_id)

    return [
        Subscription(ON_SERIALS_ISSUED, SerialsIssued, on_serials_issued),
        Subscription(ON_SERIALS_VOID_REQUESTED, SerialsVoidRequested, on_serials_void_requested),
        Subscription(ON_JOB_QUEUED, StampingJobQueued, on_job_queued, prefetch=settings.job_prefetch,
                     concurrency=settings.job_concurrency, batch_max=1),
    ]
