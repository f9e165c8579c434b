"""What the API reads: an account's quota, its stamping jobs and their documents, and the verdict
on a verified document's stamps."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.documents import DocumentStore, Kind, StoredDocument
from stamping_service.adapters.quota import Quota, QuotaRepository
from stamping_service.adapters.stampings import StampingRepository
from stamping_service.domain.stamping import SignatureCheck, StampingView, Verdict, verdict


async def quota(uow: UnitOfWork, account_id: uuid.UUID) -> Quota:
    return await QuotaRepository(uow.conn).quota(account_id)


async def stamping(uow: UnitOfWork, stamping_id: uuid.UUID, account_id: uuid.UUID) -> StampingView | None:
    """The job, when it is ``account_id``'s."""
    return await StampingRepository(uow.conn).get(stamping_id, account_id)


async def stamped_document(uow: UnitOfWork, store: DocumentStore, job: StampingView) -> StoredDocument | None:
    """A DONE job's stamped PDF; None past its retention."""
    return await store.get(uow.conn, job.id, Kind.STAMPED)


async def verification(uow: UnitOfWork, checks: Sequence[SignatureCheck]) -> Verdict:
    """The verdict on a document's signatures, with each serial's state here."""
    states = await QuotaRepository(uow.conn).states(sorted({c.sn for c in checks if c.sn is not None}))
    return verdict(checks, states)
