"""``QrisAvailability``: the api process reads the acquirers' availability at most once per TTL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from order_service.adapters.acquirer_states import QrisAvailability, QrisOutage


class Table:
    """What ``AcquirerStates.qris_outage`` reads: one acquirer's row, or none; counts the reads."""

    def __init__(self) -> None:
        self.row: dict[str, Any] | None = None
        self.reads = 0

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        assert "acquirer_states" in query
        self.reads += 1
        return self.row


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_outage_is_read_once_per_ttl_and_learnt_at_most_a_ttl_late() -> None:
    table, clock = Table(), Clock()
    qris = QrisAvailability(2.0, clock)
    conn: Any = table
    assert await qris.outage(conn) is None and table.reads == 1
    retry_at = datetime(2026, 1, 1, tzinfo=UTC)
    table.row = {"acquirer_id": "acq", "retry_at": retry_at}  # the acquirer goes down
    clock.now += 1.9
    assert await qris.outage(conn) is None and table.reads == 1, "within the TTL: what was read"
    clock.now += 0.1
    assert await qris.outage(conn) == QrisOutage("acq", retry_at) and table.reads == 2
    for _ in range(5):
        assert await qris.outage(conn) == QrisOutage("acq", retry_at)
    assert table.reads == 2
    table.row = None  # back
    clock.now += 2.0
    assert await qris.outage(conn) is None and table.reads == 3


async def test_a_ttl_of_zero_reads_every_time() -> None:
    table = Table()
    qris = QrisAvailability(0.0, Clock())
    conn: Any = table
    for _ in range(3):
        assert await qris.outage(conn) is None
    assert table.reads == 3
