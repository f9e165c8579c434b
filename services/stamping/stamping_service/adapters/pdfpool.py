"""CPU-bound PDF work (inspect, stamp, verify) in worker processes, awaited from the event loop.

Built on pebble's ``ProcessPool`` rather than ``concurrent.futures``: a task that overruns its
timeout has its process killed and replaced (a hostile document stuck in native code cannot be
cancelled any other way), a process that dies (segfault, out of memory) fails only its own task
(``ProcessExpired``) instead of breaking the pool, and processes are recycled after
``max_tasks`` tasks. Each process loads the signer, the timestamper and the trust roots once,
on first use, from the plain-data ``SigningConfig`` it was started with; the processes are
started by a forkserver, never forked from the threaded event-loop process. The processes get the
creating process's failpoints (or the ones given): ``stamping.sign=hang`` makes every signature
overrun its timeout, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from collections.abc import Callable
from typing import Any, TypeVar

from emeterai_shared import failpoints
from pebble import ProcessExpired, ProcessPool

from stamping_service.adapters.pdf.inspect import Limits, inspect_pdf
from stamping_service.adapters.pdf.stamp import stamp_pdf
from stamping_service.adapters.pdf.verify import StampCheck, verify_pdf
from stamping_service.adapters.signing import SigningConfig

T = TypeVar("T")


class PdfTimeout(Exception):
    """The task overran its timeout; its process was killed."""


class PdfWorkerDied(Exception):
    """The process running the task died (killed, out of memory, crashed in native code)."""


class StampFailed(Exception):
    """The document cannot be stamped (a property of the document: retrying cannot help)."""


_state: dict[str, Any] = {}


def _initialize(config: SigningConfig, failpoint_spec: str) -> None:
    _state.clear()
    _state["config"] = config
    failpoints.configure(failpoint_spec)


def _config() -> SigningConfig:
    config = _state.get("config")
    assert isinstance(config, SigningConfig), "the PDF pool process was not initialized"
    return config


def _inspect(data: bytes, password: str | None, page: int, x: float, y: float, size: float,
             limits: Limits) -> None:
    inspect_pdf(data, password=password, page=page, x=x, y=y, size=size, limits=limits)


def _stamp(data: bytes, password: str | None, page: int, x: float, y: float, size: float, sn: str, token: str,
           reason: str) -> bytes:
    if "signer" not in _state:  # configuration problems raise as they are: retried, not the document's fault
        _state["signer"] = _config().signer()
        _state["timestamper"] = _config().timestamper()
    failpoints.failpoint("stamping.sign")
    try:
        return stamp_pdf(data, password=password, page=page, x=x, y=y, size=size, sn=sn, token=token,
                         reason=reason, signer=_state["signer"], timestamper=_state["timestamper"])
    except Exception as exc:
        raise StampFailed(f"{type(exc).__name__}: {exc}"[:500]) from None


def _verify(data: bytes, password: str | None) -> list[StampCheck]:
    if "roots" not in _state:
        _state["roots"] = _config().trust_roots()
    return verify_pdf(data, _state["roots"], password=password)


class PdfPool:
    """The PDF worker processes of one service process: started at the first task (a process that
    never handles a PDF, such as the relay, starts none), stopped by ``close``."""

    def __init__(self, config: SigningConfig, workers: int, max_tasks: int = 1000,
                 failpoint_spec: str | None = None):
        self.workers = workers
        self._config = config
        self._max_tasks = max_tasks
        self._failpoints = failpoints.spec() if failpoint_spec is None else failpoint_spec
        self._pool: ProcessPool | None = None

    @property
    def started(self) -> bool:
        return self._pool is not None

    def _processes(self) -> ProcessPool:
        if self._pool is None:
            self._pool = ProcessPool(max_workers=self.workers, max_tasks=self._max_tasks, initializer=_initialize,
                                     initargs=[self._config, self._failpoints],
                                     context=multiprocessing.get_context("forkserver"))
        return self._pool

    async def _run(self, function: Callable[..., T], args: tuple[Any, ...], timeout: float) -> T:
        future: concurrent.futures.Future[T] = self._processes().schedule(function, args=list(args), timeout=timeout)
        try:
            return await asyncio.wrap_future(future)  # cancelling the await cancels (kills) the task
        except concurrent.futures.TimeoutError as exc:
            raise PdfTimeout(f"{function.__name__.lstrip('_')} took longer than {timeout}s") from exc
        except ProcessExpired as exc:
            raise PdfWorkerDied(f"the PDF worker process died ({exc})") from exc

    async def inspect(self, data: bytes, password: str | None, page: int, x: float, y: float, size: float,
                      limits: Limits) -> None:
        """``inspect_pdf`` (raises ``PdfRejected``), or ``PdfTimeout`` after ``limits.parse_timeout_s``."""
        await self._run(_inspect, (data, password, page, x, y, size, limits), limits.parse_timeout_s)

    async def stamp(self, data: bytes, *, password: str | None, page: int, x: float, y: float, size: float,
                    sn: str, token: str, reason: str, timeout: float) -> bytes:
        """The stamped document; ``StampFailed`` when the document cannot be stamped."""
        return await self._run(_stamp, (data, password, page, x, y, size, sn, token, reason), timeout)

    async def verify(self, data: bytes, password: str | None, timeout: float) -> list[StampCheck]:
        return await self._run(_verify, (data, password), timeout)

    def close(self) -> None:
        """Stop at once: running tasks are killed (their callers see them cancelled). A later task
        starts new processes."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join(timeout=5)

    async def aclose(self) -> None:
        """``close`` for ``Resources.closers``."""
        self.close()
