"""Reconciliation of a bank's or a QRIS acquirer's settlement list against our captured payments
(and the acquirer's refunds against ours) (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Settled:
    """One line of a settlement list, or one payment of ours."""

    payment_request_id: str
    amount: int
    """Whole rupiah."""
    time: datetime
    """The bank's time of the transaction (ours: ``trxDateTime``, else when we captured it)."""
    alias: str | None = None
    """Another id the other side may name it by: a QRIS payment's RRN (its key is the acquirer's
    ``referenceNo``)."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @classmethod
    def of(cls, lines: Sequence[Settled]) -> Window:
        times = [line.time for line in lines]
        return cls(min(times), max(times))

    def __contains__(self, when: datetime) -> bool:
        return self.start <= when <= self.end


def reconcile(bank_lines: Sequence[Settled], ours: Sequence[Settled], window: Window,
              key: str = "paymentRequestId") -> dict[str, Any]:
    """Compare by id (``key`` names it in the amount mismatches: a bank's paymentRequestId, a QRIS
    acquirer's referenceNo or refundNo).

    ``ours`` holds our payments named in the list plus those captured inside ``window``; one of
    ours missing from the list counts only when it lies inside the window. A line naming one of
    ours by its alias (a QRIS payment's RRN) is compared under that one's id.
    """
    aliases = {p.alias: p.payment_request_id for p in ours if p.alias}
    ids = {p.payment_request_id for p in ours}
    bank_lines = [line if line.payment_request_id in ids or line.payment_request_id not in aliases
                  else replace(line, payment_request_id=aliases[line.payment_request_id]) for line in bank_lines]
    theirs = {line.payment_request_id: line for line in bank_lines}
    mine = {p.payment_request_id: p for p in ours}
    matched = sorted(k for k in theirs.keys() & mine.keys() if theirs[k].amount == mine[k].amount)
    mismatches = [
        {key: k, "ours": mine[k].amount, "bank": theirs[k].amount}
        for k in sorted(theirs.keys() & mine.keys())
        if theirs[k].amount != mine[k].amount
    ]
    missing_ours = sorted(theirs.keys() - mine.keys())
    missing_bank = sorted(k for k in mine.keys() - theirs.keys() if mine[k].time in window)
    duplicates = sorted(k for k, n in Counter(line.payment_request_id for line in bank_lines).items() if n > 1)
    return {
        "window": {"from": window.start.isoformat(), "to": window.end.isoformat()},
        "counts": {
            "lines": len(bank_lines),
            "matched": len(matched),
            "missing_on_our_side": len(missing_ours),
            "missing_on_bank_side": len(missing_bank),
            "amount_mismatches": len(mismatches),
            "duplicates_in_file": len(duplicates),
        },
        "matched": matched,
        "missing_on_our_side": missing_ours,
        "missing_on_bank_side": missing_bank,
        "amount_mismatches": mismatches,
        "duplicates_in_file": duplicates,
    }
