"""The stamping service's subscriptions (handlers in ``service_layer.handlers``).

Jobs are taken one per transaction (a transaction never waits on another job's signature),
``job_concurrency`` at a time, and a worker holds only ``job_prefetch`` of them, so that a backlog
spreads over every worker process instead of waiting in one's buffer. The stamper (and its PDF
processes) is injected when the worker starts; its processes start at the first job.
"""

from __future__ import annotations

from emeterai_shared.contracts.events import AccountVerified, SerialsIssued, SerialsVoidRequested
from emeterai_shared.messaging import Subscription

from stamping_service.domain.contracts import StampingJobQueued
from stamping_service.service_layer import handlers

ON_SERIALS_ISSUED = "stamping.on_serials_issued"
ON_JOB_QUEUED = "stamping.on_job_queued"
ON_SERIALS_VOID_REQUESTED = "stamping.on_serials_void_requested"
ON_ACCOUNT_VERIFIED = "stamping.on_account_verified"

SUBSCRIPTIONS = (
    Subscription(ON_SERIALS_ISSUED, SerialsIssued, handlers.on_serials_issued),
    Subscription(ON_SERIALS_VOID_REQUESTED, SerialsVoidRequested, handlers.on_serials_void_requested),
    Subscription(ON_ACCOUNT_VERIFIED, AccountVerified, handlers.on_account_verified),
    Subscription(ON_JOB_QUEUED, StampingJobQueued, handlers.on_job_queued, prefetch=lambda s: s.job_prefetch,
                 concurrency=lambda s: s.job_concurrency, batch_max=1),
)
