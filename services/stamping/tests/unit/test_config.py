"""Stamping settings that would deadlock the worker are refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from stamping_service.config import StampingSettings


def test_job_concurrency_defaults_to_twice_the_pdf_workers_within_half_the_pool() -> None:
    assert StampingSettings(pdf_workers=2, db_pool_max=8).job_concurrency == 4
    assert StampingSettings(pdf_workers=8, db_pool_max=8).job_concurrency == 4  # a bigger machine: the pool bounds it
    assert StampingSettings(pdf_workers=8, db_pool_max=32).job_concurrency == 16


def test_more_jobs_than_half_the_pool_is_refused() -> None:
    with pytest.raises(ValidationError, match="raise db_pool_max"):
        StampingSettings(job_concurrency=8, db_pool_max=8)
