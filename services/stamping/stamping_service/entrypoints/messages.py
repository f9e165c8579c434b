"""The stamping service's subscriptions: the quota projection fed by minting's events, and the
stamping jobs its own api queues."""

from __future__ import annotations

import logging
from collections.abc import Callable

from emeterai_shared.contracts.events import SerialsIssued
from emeterai_shared.messaging import Envelope, PermanentError, Subscription
from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.quota import QuotaRepository
from stamping_service.config import StampingSettings
from stamping_service.messages import StampingJobQueued
from stamping_service.service_layer.stamper import Stamper

log = logging.getLogger(__name__)

ON_SERIALS_ISSUED = "stamping.on_serials_issued"
ON_JOB_QUEUED = "stamping.on_job_queued"


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


def subscriptions(settings: StampingSettings, stamper: Callable[[], Stamper]) -> list[Subscription]:
    """``stamper`` is called at the first job, so that listing subscriptions starts no process.

    Jobs are taken one per transaction (a transaction never waits on another job's signature),
    ``job_concurrency`` at a time, and a worker holds only ``job_prefetch`` of them, so that a
    backlog spreads over every worker process instead of waiting in one's buffer."""

    async def on_job_queued(uow: UnitOfWork, env: Envelope[StampingJobQueued]) -> None:
        await stamper().stamp(uow, env.body.stamping_id)

    return [
        Subscription(ON_SERIALS_ISSUED, SerialsIssued, on_serials_issued),
        Subscription(ON_JOB_QUEUED, StampingJobQueued, on_job_queued, prefetch=settings.job_prefetch,
                     concurrency=settings.job_concurrency, batch_max=1),
    ]
