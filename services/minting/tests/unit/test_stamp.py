"""A serial's life: one use per serial, repeated reports change nothing, reuse is refused."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from minting_service.domain.stamp import SerialStatus, Stamp, UseOutcome

NOW = datetime(2024, 9, 6, 10, 0, tzinfo=UTC)
SHA = "ab" * 32


def test_an_unused_stamp_is_used_once() -> None:
    stamp = Stamp("SN", SerialStatus.UNUSED, minted_at=NOW)
    first, second = uuid4(), uuid4()
    assert stamp.use(first, SHA, NOW) is UseOutcome.APPLIED
    assert (stamp.status, stamp.stamping_id, stamp.document_sha256, stamp.stamped_at) == \
        (SerialStatus.STAMPED, first, SHA, NOW)
    assert stamp.use(first, "cd" * 32, NOW) is UseOutcome.REPEATED
    assert stamp.use(second, "cd" * 32, NOW) is UseOutcome.REFUSED
    assert (stamp.stamping_id, stamp.document_sha256) == (first, SHA)


@pytest.mark.parametrize("status", [SerialStatus.STOCK, SerialStatus.VOID])
def test_stock_and_void_serials_cannot_be_used(status: SerialStatus) -> None:
    stamp = Stamp("SN", status)
    assert stamp.use(uuid4(), SHA, NOW) is UseOutcome.REFUSED
    assert stamp.status is status and stamp.stamping_id is None


def test_stock_is_not_a_public_stamp() -> None:
    assert not Stamp("SN", SerialStatus.STOCK).is_public
    assert all(Stamp("SN", s).is_public for s in (SerialStatus.UNUSED, SerialStatus.STAMPED, SerialStatus.VOID))
