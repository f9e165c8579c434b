"""Sends partner webhooks from the worker process, one partner never holding up another.

Each partner with a ``webhook_url`` has up to ``webhook_concurrency_per_partner`` *lanes* in this
process. ``tick`` (a periodic job of the worker) leases due deliveries for the free lanes of every
partner in one statement and starts a lane for each; a lane sends, logs the attempt with its
verdict and leases that partner's next due delivery in one transaction, and goes on until none is
due. A slow or failing partner therefore fills only its own lanes, each attempt bounded by
``webhook_timeout_s``; other partners' lanes keep going. Several workers share the work through
``SKIP LOCKED`` (the cap is per process).

Delivery is at least once: a worker that dies after the partner answered but before the commit
sends again when the lease runs out. Partners deduplicate on ``webhook-id``; deliveries of one
partner may arrive out of order (lanes, retries), the pull feed is the ordered record.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from datetime import UTC, datetime

import asyncpg

from order_service.adapters.partner_store import Job, PartnerEventRepository
from order_service.adapters.partners import Partner, PartnerRegistry
from order_service.adapters.webhooks import WebhookSender
from order_service.config import OrderSettings
from order_service.domain.delivery import DeliveryStatus, RetryPolicy
from order_service.metrics import WEBHOOK_ATTEMPTS

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 60.0
"""A claimed delivery is due again this long after its attempt's timeout (if its lane died)."""


class WebhookDispatcher:
    def __init__(self, pool: asyncpg.Pool, partners: PartnerRegistry, settings: OrderSettings):
        self._pool = pool
        self._partners = {p.partner_id: p for p in partners.with_webhooks()}
        self._cap = max(1, settings.webhook_concurrency_per_partner)
        self._lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self._policy = RetryPolicy(settings.webhook_backoff_initial_s, settings.webhook_backoff_max_s,
                                   settings.webhook_max_age_s)
        self._sender = WebhookSender(settings.webhook_timeout_s)
        self._lanes: dict[str, set[asyncio.Task[None]]] = defaultdict(set)
        self._closing = False

    async def tick(self) -> None:
        """Start a lane for each due delivery, up to each partner's free lanes."""
        wanted = {pid: self._cap - len(self._lanes[pid]) for pid in self._partners}
        wanted = {pid: n for pid, n in wanted.items() if n > 0}
        if self._closing or not wanted:
            return
        async with self._pool.acquire() as conn:
            jobs = await PartnerEventRepository(conn).claim(wanted, self._lease_s)
        for job in jobs:
            lanes = self._lanes[job.partner_id]
            task = asyncio.create_task(self._lane(job), name=f"webhooks-{job.partner_id}")
            lanes.add(task)
            task.add_done_callback(lanes.discard)

    async def _lane(self, first: Job) -> None:
        """Deliver ``first``, then the partner's next due deliveries while there are any."""
        job: Job | None = first
        while job is not None:
            current, partner = job, self._partners[job.partner_id]
            try:
                job = await self._deliver(partner, current)
            except Exception:  # the database is unreachable: the lease brings the delivery back
                log.exception("webhook delivery %d to %s could not be recorded", current.delivery_id,
                              partner.partner_id)
                return

    async def _deliver(self, partner: Partner, job: Job) -> Job | None:
        """One attempt, logged with its verdict; returns the partner's next due delivery, if any."""
        assert partner.webhook_url is not None
        attempt = await self._sender.send(partner.webhook_url, partner.webhook_key, str(job.event.event_id),
                                          job.event.body())
        verdict = self._policy.judge(attempt, job.attempts, job.first_at, datetime.now(UTC), random.random())
        WEBHOOK_ATTEMPTS.labels(partner.partner_id, verdict.status.value).inc()
        if verdict.status is DeliveryStatus.FAILED:
            log.error("webhook %s to %s failed for good after %d attempts: %s", job.event.event_id,
                      partner.partner_id, job.attempts + 1, attempt.error)
        async with self._pool.acquire() as conn, conn.transaction():
            deliveries = PartnerEventRepository(conn)
            await deliveries.finish(job, attempt, verdict)
            if self._closing:
                return None
            following = await deliveries.claim({partner.partner_id: 1}, self._lease_s)
        return following[0] if following else None

    async def close(self) -> None:
        """Let attempts in flight finish and be logged (each is bounded by its timeout), then close."""
        self._closing = True
        lanes = [task for tasks in self._lanes.values() for task in tasks]
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=self._sender.timeout_s + 5)
            for task in late:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        await self._sender.close()
