"""Paying a refund out to the buyer: the bank adapter for disbursements.

A payout names our refund id; a bank answers the same transfer (and reference) for the same id,
so the payout job may repeat a call whose answer it lost (a crash between the bank's answer and
our commit) without paying twice. ``DevelopmentBankPayouts`` is the development bank's simulation:
it pays instantly and deterministically; it is the only adapter so far (``PAYMENT_PAYOUT_ADAPTER``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from uuid import UUID


@dataclass(frozen=True)
class Payout:
    refund_id: UUID
    """The idempotency key of the transfer at the bank."""
    order_id: UUID
    amount: int
    bank: str
    """client_id of the bank the buyer paid at (it pays the refund back to the same payer)."""


class PayoutError(RuntimeError):
    """The bank refused or did not answer: the payout is retried later."""


class Payouts(Protocol):
    async def pay_out(self, payout: Payout) -> str:
        """Pay ``payout`` and return the bank's reference; the same reference for the same refund id."""
        ...


class DevelopmentBankPayouts:
    """The development bank simulates the payout: accepted at once, reference from the refund id."""

    async def pay_out(self, payout: Payout) -> str:
        if payout.amount <= 0:
            raise PayoutError(f"refund {payout.refund_id}: amount {payout.amount} is not payable")
        return f"SIMPAYOUT-{payout.refund_id.hex[:24].upper()}"


def payouts_adapter(name: str) -> Payouts:
    if name == "devbank":
        return DevelopmentBankPayouts()
    raise ValueError(f"unknown payout adapter {name!r} (known: devbank)")
