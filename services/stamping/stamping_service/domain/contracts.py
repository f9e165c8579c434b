"""Message contracts the stamping service publishes to itself (not part of the shared contracts, which
are the platform's: its api queues a job, its worker stamps it; `entrypoints/messages` is the table of
the queues it consumes)."""

from __future__ import annotations

from uuid import UUID

from emeterai_shared.contracts import Message
from emeterai_shared.contracts.base import message


@message("stamping.job_queued.v1")
class StampingJobQueued(Message):
    """An upload was accepted and its serial reserved: the worker stamps it."""

    stamping_id: UUID
    account_id: UUID
    sn: str
