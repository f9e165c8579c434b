"""The stamping service's subscriptions: the quota projection fed by minting's events."""

from __future__ import annotations

import logging

from emeterai_shared.contracts.events import SerialsIssued
from emeterai_shared.messaging import Envelope, PermanentError, Subscription
from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.quota import QuotaRepository

log = logging.getLogger(__name__)

ON_SERIALS_ISSUED = "stamping.on_serials_issued"


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


def subscriptions() -> list[Subscription]:
    return [Subscription(ON_SERIALS_ISSUED, SerialsIssued, on_serials_issued)]
