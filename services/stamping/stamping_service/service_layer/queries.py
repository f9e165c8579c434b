"""What the API reads: an account's quota, its stamping jobs and their documents, and the verdict
on a verified document's stamps."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from emeterai_shared.pagination import PageRequest, page_of
from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.documents import DocumentStore, Kind, StoredDocument
from stamping_service.adapters.quota import Quota, QuotaRepository
from stamping_service.adapters.stampings import StampingRepository
from stamping_service.domain.stamping import (
    JobStatus,
    QueuePlace,
    SignatureCheck,
    StampingView,
    Verdict,
    queue_place,
    verdict,
)


async def quota(uow: UnitOfWork, account_id: uuid.UUID) -> Quota:
    return await QuotaRepository(uow.conn).quota(account_id)


async def stamping(uow: UnitOfWork, stamping_id: uuid.UUID, account_id: uuid.UUID) -> StampingView | None:
    """The job, when it is ``account_id``'s."""
    return await StampingRepository(uow.conn).get(stamping_id, account_id)


async def history(uow: UnitOfWork, account_id: uuid.UUID, page: PageRequest) -> tuple[list[StampingView], str | None]:
    """A page of ``account_id``'s jobs, newest first, and the cursor of the next page (None: last)."""
    rows = await StampingRepository(uow.conn).history(account_id, page.after, page.limit + 1)
    entries, cursor = page_of(rows, page.limit, lambda row: row[1])
    return [view for view, _ in entries], cursor


async def queue_places(uow: UnitOfWork, views: list[StampingView], drain_per_s: float,
                       fallback_s_per_job: float) -> dict[uuid.UUID, QueuePlace]:
    """Where each QUEUED one of ``views`` stands in the queue, with its ETA (one query for them all).
    A job a worker took between reading ``views`` and counting is at the head: position 1."""
    queued = [v.id for v in views if v.status == JobStatus.QUEUED]
    positions = await StampingRepository(uow.conn).queue_positions(queued)
    return {job_id: queue_place(positions.get(job_id, 1), drain_per_s, fallback_s_per_job) for job_id in queued}


async def stamped_document(uow: UnitOfWork, store: DocumentStore, job: StampingView) -> StoredDocument | None:
    """A DONE job's stamped PDF; None past its retention."""
    return await store.get(uow.conn, job.id, Kind.STAMPED)


async def verification(uow: UnitOfWork, checks: Sequence[SignatureCheck]) -> Verdict:
    """The verdict on a document's signatures, with each serial's state here."""
    states = await QuotaRepository(uow.conn).states(sorted({c.sn for c in checks if c.sn is not None}))
    return verdict(checks, states)
