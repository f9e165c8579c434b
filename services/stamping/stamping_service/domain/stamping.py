"""The stamping model: a job's states, its stamp's states, and the verdict of a verification.

A stamping job (one uploaded document) and the stamp (serial) it uses move together::

    upload            worker starts          signed and stored
    ───────▶ QUEUED ───────────────▶ STAMPING ───────────────▶ DONE      stamp RESERVED → USED
      stamp    │                      │   ▲ (retried: timeout,
    UNUSED →   │                      │   │  dead PDF process)
    RESERVED   └──────────────────────┴───┴─────────────────▶ FAILED    stamp RESERVED → UNUSED

A job never leaves DONE or FAILED: a redelivered or re-queued message finds it finished and
changes nothing, so a document is stamped once, with the serial reserved at upload. A stamp is
UNUSED (the account's to use), RESERVED (held by an unfinished job), USED (affixed) or VOID
(given back by its order: only an UNUSED one can be).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol
from uuid import UUID


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    STAMPING = "STAMPING"
    DONE = "DONE"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        """DONE or FAILED: the job is over and no message changes it any more."""
        return self in FINISHED

    def can_become(self, target: JobStatus) -> bool:
        return target in TRANSITIONS[self]


UNFINISHED = (JobStatus.QUEUED, JobStatus.STAMPING)
"""Jobs a worker still has to finish (the stamping backlog; re-queued when their message is lost)."""
FINISHED = (JobStatus.DONE, JobStatus.FAILED)

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.STAMPING, JobStatus.DONE, JobStatus.FAILED}),
    JobStatus.STAMPING: frozenset({JobStatus.STAMPING, JobStatus.DONE, JobStatus.FAILED}),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
}
"""STAMPING → STAMPING is a new attempt (the previous one died or timed out)."""


class StampStatus(StrEnum):
    """A serial in this service's quota projection."""

    UNUSED = "UNUSED"
    RESERVED = "RESERVED"
    USED = "USED"
    VOID = "VOID"


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where and how a job's stamp goes on its document (as uploaded; the job keeps it)."""

    page: int
    """1-based page."""
    x: float
    y: float
    """Points from the page's lower-left corner to the stamp's."""
    size: float
    """Side of the square stamp, in points."""
    reason: str
    """The signature's reason (after the serial)."""
    password: str | None
    """The password of an encrypted document; forgotten once the job is finished."""


@dataclass(frozen=True, kw_only=True)
class NewStamping(Placement):
    """A job as an accepted upload creates it (QUEUED, its serial RESERVED)."""

    id: UUID
    account_id: UUID
    sn: str
    document_sha256: str


@dataclass(frozen=True)
class StampingView:
    """A job as its owner sees it."""

    id: UUID
    status: JobStatus
    sn: str
    error: str | None
    stamped_sha256: str | None
    stamped_at: datetime | None


@dataclass(frozen=True)
class QueuePlace:
    """Where a QUEUED job stands: ``position`` 1 is the next the workers take."""

    position: int
    eta_s: int


def queue_place(position: int, drain_per_s: float, fallback_s_per_job: float) -> QueuePlace:
    """The ETA of the job at ``position``: the jobs up to and including it at the measured drain rate
    (jobs finished per second), or ``fallback_s_per_job`` each while nothing was measured (no job
    finished lately: the workers just started, or are down)."""
    per_job = 1 / drain_per_s if drain_per_s > 0 else fallback_s_per_job
    return QueuePlace(position, max(1, math.ceil(position * per_job)))


@dataclass(frozen=True, kw_only=True)
class Job(Placement):
    """A job as the worker needs it, with its stamp's token."""

    id: UUID
    account_id: UUID
    sn: str
    token: str
    status: JobStatus
    attempts: int
    """Times the job was started (crashes included)."""


class UploadRefused(Exception):
    """An upload this service refuses for the account's stamps (not for the document)."""


class NoQuota(UploadRefused):
    """The account has no UNUSED stamp left."""


class SerialUnavailable(UploadRefused):
    """The serial asked for is not an UNUSED stamp of the account."""

    def __init__(self, sn: str):
        super().__init__(f"serial {sn} is not an unused stamp of this account")
        self.sn = sn


# --- verification --------------------------------------------------------------------------------


class RegistryStatus(StrEnum):
    """A serial as ``POST /v1/verify`` reports it."""

    STAMPED = "STAMPED"
    UNUSED = "UNUSED"
    """Issued, not affixed through this platform (UNUSED, or RESERVED by a job in progress)."""
    UNKNOWN = "UNKNOWN"


def registry_status(stamp: str | None) -> RegistryStatus:
    """The verification's status of a serial from its state here (None: not known here)."""
    if stamp == StampStatus.USED:
        return RegistryStatus.STAMPED
    if stamp in (StampStatus.UNUSED, StampStatus.RESERVED):
        return RegistryStatus.UNUSED
    return RegistryStatus.UNKNOWN


class SignatureCheck(Protocol):
    """One signature of a document as the PDF library checked it (``adapters.pdf.StampCheck``)."""

    @property
    def sn(self) -> str | None: ...
    @property
    def signed_at(self) -> datetime | None: ...
    @property
    def intact(self) -> bool: ...
    @property
    def trusted(self) -> bool: ...
    @property
    def valid(self) -> bool: ...


@dataclass(frozen=True)
class StampVerdict:
    sn: str
    status: RegistryStatus
    signed_at: datetime | None
    intact: bool
    trusted: bool


@dataclass(frozen=True)
class Verdict:
    valid: bool
    """At least one stamp, and every stamp intact, trusted, valid and STAMPED in the registry."""
    stamps: list[StampVerdict]
    other_signatures: int
    """Signatures that are not e-meterai stamps (no serial in their reason)."""


def verdict(checks: Sequence[SignatureCheck], stamps: Mapping[str, str]) -> Verdict:
    """The verdict on a document's signatures; ``stamps``: the state here of each serial known here."""
    found = [c for c in checks if c.sn is not None]
    verdicts = [StampVerdict(sn=c.sn, status=registry_status(stamps.get(c.sn)), signed_at=c.signed_at,
                             intact=c.intact, trusted=c.trusted) for c in found if c.sn is not None]
    valid = bool(verdicts) and all(
        s.intact and s.trusted and s.status == RegistryStatus.STAMPED for s in verdicts) and all(
        c.valid for c in found)
    return Verdict(valid=valid, stamps=verdicts, other_signatures=len(checks) - len(found))
