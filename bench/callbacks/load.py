"""The load generator: pre-built requests POSTed with bounded concurrency over one aiohttp session."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from payment_service.adapters.banksim import SignedRequest

from bench.messaging.raw import Rate

Check = Callable[[int, bytes], str | None]
"""(HTTP status, body) → None when the answer is the expected one, else an error label."""


@dataclass(frozen=True)
class Load:
    """Requests answered (all of them, errors included) over the wall time, and each latency."""

    rate: Rate
    latencies_ms: list[float]
    errors: dict[str, int]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def client_session(concurrency: int) -> aiohttp.ClientSession:
    """One session with at most ``concurrency`` connections (kept alive between requests)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                 timeout=aiohttp.ClientTimeout(total=60))


async def fire(session: aiohttp.ClientSession, origin: str, requests: Sequence[SignedRequest], *,
               concurrency: int, check: Check) -> Load:
    """POST every request (path, headers, body) to ``origin``, ``concurrency`` in flight; time it."""
    pending = iter(requests)
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def sender() -> None:
        for path, headers, raw in pending:
            sent = time.perf_counter()
            try:
                async with session.post(origin + path, data=raw, headers=headers) as response:
                    status, body = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                continue
            latencies.append(1000 * (time.perf_counter() - sent))
            if (error := check(status, body)) is not None:
                errors[error] += 1

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return Load(Rate(len(requests), time.perf_counter() - started), latencies, dict(errors))
