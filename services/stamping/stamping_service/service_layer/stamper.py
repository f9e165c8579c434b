"""The stamping worker's use case: stamp one queued job, exactly once, or fail it and release its serial.

Per ``stamping.job_queued.v1`` (one message per transaction; see ``entrypoints/messages``; the
states are ``domain.stamping``'s):

1. the job is marked STAMPING in its own short transaction (its owner sees progress, and the
   attempt is counted even if the process dies while signing);
2. in the message's transaction the job row is locked; a job already DONE or FAILED (a
   redelivered or re-queued message) is left as it is, so a document is stamped once, with the
   serial reserved at upload, whatever the number of deliveries;
3. the PDF is rendered and signed in a PDF worker process (the event loop keeps consuming,
   acking and answering health checks);
4. the stamped PDF, DONE, the stamp USED and ``stamping.document_stamped.v1`` commit together
   (a job failed for good: FAILED, the stamp UNUSED and ``stamping.document_failed.v1``).
   Dying before this commit loses only the signature: the redelivery signs again, and only the
   committed document ever leaves the service.

A document that cannot be stamped (a property of the document, retrying cannot help) fails the
job at once; a timeout or a dead PDF process is retried until the job has been tried
``max_attempts`` times, and then fails it. A failed job's serial goes back to UNUSED.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from emeterai_shared.contracts.events import DocumentFailed, DocumentStamped
from emeterai_shared.failpoints import failpoint
from emeterai_shared.messaging import PermanentError
from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.documents import DocumentStore, Kind
from stamping_service.adapters.pdfpool import PdfPool, PdfTimeout, PdfWorkerDied, StampFailed
from stamping_service.adapters.stampings import StampingRepository
from stamping_service.config import StampingSettings
from stamping_service.domain.contracts import StampingJobQueued
from stamping_service.domain.stamping import Job
from stamping_service.metrics import SIGN_SECONDS, STAMPINGS

log = logging.getLogger(__name__)


class Stamper:
    def __init__(self, pool: asyncpg.Pool, pdf: PdfPool, store: DocumentStore, settings: StampingSettings):
        self._pool = pool
        self._pdf = pdf
        self._store = store
        self._settings = settings

    async def stamp(self, uow: UnitOfWork, stamping_id: uuid.UUID) -> None:
        async with self._pool.acquire() as conn:
            await StampingRepository(conn).mark_started(stamping_id)
        repo = StampingRepository(uow.conn)
        job = await repo.lock(stamping_id)
        if job is None:
            raise PermanentError(f"there is no stamping job {stamping_id}")
        if job.status.finished:
            log.info("stamping %s is already %s: nothing to do", job.id, job.status)
            return
        original = await self._store.get(uow.conn, job.id, Kind.ORIGINAL)
        if original is None:
            await self._fail(uow, repo, job, "the uploaded document is no longer stored")
            return
        started = time.perf_counter()
        try:
            stamped = await self._pdf.stamp(
                original.data, password=job.password, page=job.page, x=job.x, y=job.y, size=job.size,
                sn=job.sn, token=job.token, reason=job.reason, timeout=self._settings.sign_timeout_s)
        except StampFailed as exc:
            await self._fail(uow, repo, job, f"the document cannot be stamped: {exc}")
            return
        except (PdfTimeout, PdfWorkerDied) as exc:
            if job.attempts >= self._settings.max_attempts:
                await self._fail(uow, repo, job, f"gave up after {job.attempts} attempts: {exc}")
                return
            raise
        SIGN_SECONDS.observe(time.perf_counter() - started)
        failpoint("stamping.after_sign")
        now = datetime.now(UTC)
        expires = now + timedelta(days=self._settings.document_retention_days)
        sha256 = await self._store.put(uow.conn, job.id, Kind.STAMPED, stamped, expires_at=expires)
        await self._store.delete(uow.conn, job.id, Kind.ORIGINAL)
        await repo.done(job, sha256, now)
        uow.publish(DocumentStamped(stamping_id=job.id, account_id=job.account_id, sn=job.sn,
                                    document_sha256=sha256, stamped_at=now), correlation_id=str(job.id))
        STAMPINGS.labels("done").inc()
        log.info("stamping %s: %s stamped (sha256 %s)", job.id, job.sn, sha256)

    async def _fail(self, uow: UnitOfWork, repo: StampingRepository, job: Job, error: str) -> None:
        await self._store.delete(uow.conn, job.id, Kind.ORIGINAL)
        await repo.failed(job, error)
        uow.publish(DocumentFailed(stamping_id=job.id, account_id=job.account_id, sn=job.sn, error=error[:1000],
                                   failed_at=datetime.now(UTC)), correlation_id=str(job.id))
        STAMPINGS.labels("failed").inc()
        log.warning("stamping %s failed for good, serial %s released: %s", job.id, job.sn, error)


async def requeue_stale(uow: UnitOfWork, older_than_s: float, limit: int = 500) -> int:
    """Queue again the jobs whose message was lost or parked (a new message each: the job's own
    state, not the inbox, keeps a document from being stamped twice)."""
    stale = await StampingRepository(uow.conn).claim_stale(older_than_s, limit)
    for stamping_id, account_id, sn in stale:
        uow.publish(StampingJobQueued(stamping_id=stamping_id, account_id=account_id, sn=sn),
                    correlation_id=str(stamping_id))
    if stale:
        log.warning("re-queued %d stamping job(s) unfinished for over %ss", len(stale), older_than_s)
    return len(stale)


async def purge_documents(uow: UnitOfWork, store: DocumentStore, limit: int = 500) -> int:
    purged = await store.purge_expired(uow.conn, datetime.now(UTC), limit)
    if purged:
        log.info("purged %d stamped document(s) past their retention", purged)
    return purged
