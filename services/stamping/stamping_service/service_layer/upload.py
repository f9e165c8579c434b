"""The upload use case: an accepted document becomes a QUEUED job holding a reserved serial.

In the caller's unit of work: the idempotency key is claimed (a repeated request gets the first
answer back), a serial of the account is reserved (the one asked for, else the oldest UNUSED),
the job is inserted, the original document stored and ``stamping.job_queued.v1`` published, and
the answer is recorded under the key: all of it commits together or not at all. The document was
inspected before (``entrypoints.http``): nothing here reads it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emeterai_shared import idempotency
from emeterai_shared.idempotency import StoredAnswer
from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.documents import DocumentStore, Kind
from stamping_service.adapters.stampings import StampingRepository
from stamping_service.domain.contracts import StampingJobQueued
from stamping_service.domain.stamping import NewStamping, NoQuota, Placement, SerialUnavailable


@dataclass(frozen=True, kw_only=True)
class Upload(Placement):
    account_id: uuid.UUID
    document: bytes
    sha256: str
    sn: str | None
    """The serial asked for; None: the account's oldest UNUSED one."""


@dataclass(frozen=True)
class Accepted:
    stamping_id: uuid.UUID
    answer: Any
    """The answer recorded under the idempotency key (JSON)."""


async def upload(uow: UnitOfWork, store: DocumentStore, request: Upload, key: str, digest: str,
                 answer: Callable[[uuid.UUID], Any]) -> Accepted | StoredAnswer:
    """The job queued (``answer(stamping_id)`` is its 202 answer), or the answer already given for
    ``key`` with the same ``digest``. Raises ``NoQuota`` / ``SerialUnavailable`` (nothing written),
    and ``idempotency``'s ``ApiError`` for a key reused with another request."""
    scope = f"stamping:{request.account_id}"
    stored = await idempotency.claim(uow.conn, scope, key, digest)
    if stored is not None:
        return stored
    repo = StampingRepository(uow.conn)
    sn = await repo.reserve(request.account_id, request.sn)
    if sn is None:
        if request.sn is not None:
            raise SerialUnavailable(request.sn)
        raise NoQuota("no unused stamp left: buy more stamps first")
    stamping_id = uuid.uuid4()
    await repo.insert(NewStamping(id=stamping_id, account_id=request.account_id, sn=sn, page=request.page,
                                  x=request.x, y=request.y, size=request.size, reason=request.reason,
                                  password=request.password, document_sha256=request.sha256))
    await store.put(uow.conn, stamping_id, Kind.ORIGINAL, request.document)
    uow.publish(StampingJobQueued(stamping_id=stamping_id, account_id=request.account_id, sn=sn),
                correlation_id=str(stamping_id))
    body = answer(stamping_id)
    await idempotency.complete(uow.conn, scope, key, 202, body)
    return Accepted(stamping_id, body)
