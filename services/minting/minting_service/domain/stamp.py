"""A serial's life, from generated stock to stamped document.

```
STOCK ──issued to a paid order──► UNUSED ──document stamped──► STAMPED
  └── voided by an operator ──┴── given back by its order (stamping.serials_voided) ──► VOID
```

No transition goes back, so a serial is never issued twice nor used twice (the database refuses
any other transition too, see ``migrations/001_minting.sql``). A STOCK serial is not a stamp
yet: the public registry does not know it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

FACE_VALUE = 10_000
"""Rupiah: the single stamp duty tariff since 2021."""


class SerialStatus(StrEnum):
    STOCK = "STOCK"
    UNUSED = "UNUSED"
    STAMPED = "STAMPED"
    VOID = "VOID"


VOIDABLE = (SerialStatus.STOCK, SerialStatus.UNUSED)
VOID_REASON_MAX = 500
"""Characters of a void reason the registry keeps."""

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def is_sha256_hex(digest: str) -> bool:
    """A document's SHA-256 as the registry keeps it: 64 lower-case hex digits."""
    return _SHA256_HEX.match(digest) is not None


def given_back_reason(reason: str) -> str:
    """The void reason of serials an order gave back (``stamping.serials_voided``)."""
    return f"given back: {reason}"[:VOID_REASON_MAX]


class UseOutcome(StrEnum):
    """What a reported use of a serial (a stamped document) does to the registry."""

    APPLIED = "applied"
    REPEATED = "repeated"  # the same stamping reported again: nothing changes
    REFUSED = "refused"  # not an unused stamp (used by another stamping, void, unknown)


@dataclass
class Stamp:
    """A serial's registry entry."""

    sn: str
    status: SerialStatus
    minted_at: datetime | None = None
    stamped_at: datetime | None = None
    document_sha256: str | None = None
    stamping_id: UUID | None = None

    @property
    def is_public(self) -> bool:
        """Issued serials are stamps the registry shows; stock is not."""
        return self.status is not SerialStatus.STOCK

    def use(self, stamping_id: UUID, document_sha256: str, at: datetime) -> UseOutcome:
        """One serial, one document: UNUSED → STAMPED once; anything else changes nothing."""
        if self.status is SerialStatus.STAMPED and self.stamping_id == stamping_id:
            return UseOutcome.REPEATED
        if self.status is not SerialStatus.UNUSED:
            return UseOutcome.REFUSED
        self.status = SerialStatus.STAMPED
        self.stamping_id = stamping_id
        self.document_sha256 = document_sha256
        self.stamped_at = at
        return UseOutcome.APPLIED
