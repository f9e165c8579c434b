"""The probe service end to end: outbox → relay → broker → worker (inbox + handler), as processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass

import asyncpg
from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import create_pool
from emeterai_shared.outbox import outbox_stats
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import reset_service, settings_env, spawn
from emeterai_testkit.probe import SERVICE, ProbeSent

from bench.messaging.cpu import CpuMeter
from bench.messaging.raw import Rate

PROBE_MODULE = "emeterai_testkit.probe"
PRELOAD_CHUNK = 5_000


@dataclass(frozen=True)
class PipelineRate:
    """``wall``: from the start until the last effect exists; ``steady``: first to last
    effect by the database clock (process start-up excluded); ``cpu_ms``: CPU per message
    by process (start-up excluded), see ``bench.messaging.cpu``."""

    wall: Rate
    steady: Rate
    cpu_ms: dict[str, float]


@dataclass(frozen=True)
class PipelineResult:
    preloaded: PipelineRate
    live: PipelineRate
    live_producers: Rate
    duplicates: int


class ProbeProcess:
    """``python -m emeterai_testkit.probe <command>``, its output drained into a tail."""

    def __init__(self, command: str, env: dict[str, str]):
        self.command = command
        self.proc: subprocess.Popen[bytes] = spawn(PROBE_MODULE, command, env)
        self.tail: deque[str] = deque(maxlen=40)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.decode(errors="replace").rstrip())

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"probe {self.command} exited with {self.proc.returncode}:\n"
                               + "\n".join(self.tail))

    def stop(self, grace_s: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def run_pipeline(settings: ServiceSettings, *, messages: int, live_messages: int,
                       producers: int = 8, timeout_s: float = 120) -> PipelineResult:
    """Preloaded run, then live run, against one relay process and one worker process."""
    await reset_service(SERVICE, settings)
    pool = await create_pool(settings.database_url, max_size=producers)
    processes: list[ProbeProcess] = []
    try:
        await _preload(pool, messages)
        started = time.perf_counter()
        env = settings_env(settings)
        processes += [ProbeProcess("relay", env), ProbeProcess("worker", env)]
        meter = CpuMeter({p.command: p.proc.pid for p in processes})
        _, flowing = await _wait_applied(pool, 1, started, processes, timeout_s)
        before = meter.snapshot()  # both processes are up: their start-up is not counted
        wall, _ = await _wait_applied(pool, messages, started, processes, timeout_s)
        preloaded = PipelineRate(Rate(messages, wall), await _steady(pool, 0, messages),
                                 meter.per_message_ms(before, meter.snapshot(), max(1, messages - flowing)))

        before = meter.snapshot()
        started = time.perf_counter()
        share = live_messages // producers
        await asyncio.gather(*(_produce(pool, messages + p * share, share) for p in range(producers)))
        produced = Rate(share * producers, time.perf_counter() - started)
        total = messages + produced.count
        wall, _ = await _wait_applied(pool, total, started, processes, timeout_s)
        live = PipelineRate(Rate(produced.count, wall), await _steady(pool, messages, total),
                            meter.per_message_ms(before, meter.snapshot(), produced.count))
        async with pool.acquire() as conn:
            duplicates = await conn.fetchval(
                "SELECT count(*) - count(DISTINCT message_id) FROM probe_effects")
        return PipelineResult(preloaded, live, produced, duplicates)
    finally:
        for process in processes:
            process.stop()
        await pool.close()


async def _preload(pool: asyncpg.Pool, messages: int) -> None:
    """N probe messages in the outbox, written by a few large units of work."""
    for first in range(0, messages, PRELOAD_CHUNK):
        async with unit_of_work(pool) as uow:
            for seq in range(first, min(messages, first + PRELOAD_CHUNK)):
                uow.publish(ProbeSent(seq=seq), correlation_id=str(seq))


async def _produce(pool: asyncpg.Pool, first: int, count: int) -> None:
    """One live producer: one message per committed transaction, as an API request would."""
    for seq in range(first, first + count):
        async with unit_of_work(pool) as uow:
            uow.publish(ProbeSent(seq=seq), correlation_id=str(seq))


async def _wait_applied(pool: asyncpg.Pool, target: int, started: float,
                        processes: list[ProbeProcess], timeout_s: float) -> tuple[float, int]:
    """Seconds from ``started`` until at least ``target`` effects exist (polled), and how many."""
    deadline = started + timeout_s
    async with pool.acquire() as conn:
        while (count := await conn.fetchval("SELECT count(*) FROM probe_effects")) < target:
            for process in processes:
                process.check()
            if time.perf_counter() > deadline:
                stats = await outbox_stats(pool)
                raise TimeoutError(f"{count}/{target} effects after {timeout_s}s; outbox backlog "
                                   f"{stats['backlog']}, parked {stats['parked']}")
            await asyncio.sleep(0.02)
    return time.perf_counter() - started, count


async def _steady(pool: asyncpg.Pool, first_seq: int, end_seq: int) -> Rate:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT count(*) AS n, extract(epoch FROM max(applied_at) - min(applied_at)) AS span
               FROM probe_effects WHERE seq >= $1 AND seq < $2""", first_seq, end_seq)
    return Rate(row["n"], float(row["span"] or 0))
