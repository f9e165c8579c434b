"""A queued job's place: its ETA follows the measured drain rate, and a fallback per job while none is known."""

from __future__ import annotations

from stamping_service.domain.stamping import QueuePlace, queue_place


def test_eta_from_the_measured_drain_rate() -> None:
    assert queue_place(1, 2.0, 5.0) == QueuePlace(1, 1)
    assert queue_place(10, 2.0, 5.0) == QueuePlace(10, 5)
    assert queue_place(3, 0.5, 5.0) == QueuePlace(3, 6)


def test_eta_falls_back_per_job_while_nothing_drained() -> None:
    assert queue_place(3, 0.0, 2.0) == QueuePlace(3, 6)
    assert queue_place(1, 0.0, 0.1) == QueuePlace(1, 1)  # never below a second
