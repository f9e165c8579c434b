"""Version 1 of the platform's integration events.

Field names are part of the contract between services: add optional fields freely; a change
that breaks old consumers is a new major version (``.v2``) published beside the old one.
"""

from __future__ import annotations

from datetime import datetime

from emeterai_shared.contracts.base import Message, message


@message("platform.probe_sent.v1")
class ProbeSent(Message):
    """Carries no business meaning: used by readiness checks, tests and benchmarks."""

    seq: int
    note: str = ""
    sent_at: datetime | None = None
