"""A worker's periodic jobs never die silently: a failure, or a cancellation raised from within the
job (a library's task it awaited was cancelled), is logged and the job runs again; only cancelling
the job's own task ends it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from emeterai_shared.runtime import Periodic, _every, finish_jobs


class Flaky:
    """Fails in its first runs (an exception, then a cancellation from within), then counts runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.after_failures = asyncio.Event()

    async def __call__(self, _deps: Any) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("the acquirer said something odd")
        if self.runs == 2:
            inner = asyncio.create_task(asyncio.sleep(3600))
            asyncio.get_running_loop().call_soon(inner.cancel)
            await inner  # CancelledError, though nobody cancelled the job's task
        if self.runs >= 4:
            self.after_failures.set()


async def test_a_periodic_job_runs_again_after_a_failure_and_a_cancellation_from_within(
        caplog: pytest.LogCaptureFixture) -> None:
    job = Flaky()
    stop = asyncio.Event()
    ctx = SimpleNamespace(settings=None, deps=None)
    task = asyncio.create_task(_every(Periodic("flaky", 0.0, job), ctx, stop))  # type: ignore[arg-type]
    await asyncio.wait_for(job.after_failures.wait(), 60)
    assert not task.done()
    assert "periodic job flaky failed" in caplog.text
    assert "periodic job flaky was cancelled from within" in caplog.text
    stop.set()
    await asyncio.wait_for(task, 60)  # the stop ends it
    assert task.done() and not task.cancelled()


async def test_cancelling_the_jobs_own_task_ends_it() -> None:
    started = asyncio.Event()

    async def slow(_deps: Any) -> None:
        started.set()
        await asyncio.sleep(3600)

    ctx = SimpleNamespace(settings=None, deps=None)
    task = asyncio.create_task(_every(Periodic("slow", 0.0, slow), ctx, asyncio.Event()))  # type: ignore[arg-type]
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stopped_worker_cancels_a_job_still_running_after_the_grace_period(
        caplog: pytest.LogCaptureFixture) -> None:
    """A run that keeps finding work (a text dispatcher while texts come as fast as it sends them)
    must not keep a stopped worker up, working, until it is killed: after the stop a job gets the
    grace period to end its run, then it is cancelled (what it leased comes back with the lease)."""
    stop = asyncio.Event()
    started = asyncio.Event()

    async def endless(_deps: Any) -> None:
        started.set()
        await asyncio.sleep(3600)  # a run that keeps finding work

    async def quick(_deps: Any) -> None:
        pass

    ctx = SimpleNamespace(settings=None, deps=None)
    jobs = [asyncio.create_task(_every(Periodic("endless", 0.0, endless), ctx, stop),  # type: ignore[arg-type]
                                name="periodic endless"),
            asyncio.create_task(_every(Periodic("quick", 3600.0, quick), ctx, stop),  # type: ignore[arg-type]
                                name="periodic quick")]
    await asyncio.wait_for(started.wait(), 60)
    stop.set()
    await asyncio.wait_for(finish_jobs(jobs, grace_s=2.0), 60)
    assert jobs[0].cancelled()
    assert not jobs[1].cancelled()  # it ended its run by itself at the stop
    assert "periodic endless still running 2 s after the stop: cancelled" in caplog.text
