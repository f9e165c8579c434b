"""Resilience of the shared kernel against the real PostgreSQL and RabbitMQ.

* a broker stopped and restarted mid-stream loses nothing and applies nothing twice;
* the relay's attempts stay bounded (backoff) while the broker is down, and it recovers alone;
* SIGKILL between commit and ack (worker) or between confirm and sent mark (relay) ends in
  exactly one effect per message: redeliveries and republishes are absorbed by the inbox;
* SIGTERM stops a worker with handlers in progress, and a relay, cleanly (exit code 0).

Tests that stop RabbitMQ take ``broker_exclusive``. Outcomes are awaited with ``eventually``
and then asserted as exact counts; nothing here asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager

import aio_pika
import asyncpg
from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import create_pool
from emeterai_shared.failpoints import ENV as FAILPOINTS_ENV
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import (
    VHOST,
    eventually,
    fetchval,
    rabbitmqctl,
    reset_service,
    running,
    settings_env,
    settings_for,
    spawn,
    wait_for_broker,
)
from emeterai_testkit.probe import QUEUE, SERVICE, ProbeSent, ProbeSettings
from prometheus_client import REGISTRY

PROBE_MODULE = "emeterai_testkit.probe"
EXIT_TIMEOUT_S = 60.0
HARNESS_CONNECTION = "probe-test"  # the client name ``running`` gives its connection


# --- helpers -------------------------------------------------------------------------------


class Process:
    """A spawned probe process whose output is drained in the background (no pipe stalls)."""

    def __init__(self, command: str, settings: ServiceSettings, failpoints: str = "") -> None:
        env = settings_env(settings)
        env.pop(FAILPOINTS_ENV, None)
        if failpoints:
            env[FAILPOINTS_ENV] = failpoints
        self.popen = spawn(PROBE_MODULE, command, env)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._lines.append(raw.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    async def exit_code(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to end (it must end by itself, or the test fails)."""
        try:
            code: int = await asyncio.to_thread(self.popen.wait, timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"process did not exit within {timeout_s}s:\n{self.output}") from exc
        await asyncio.to_thread(self._reader.join, 5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@contextmanager
def processes() -> Iterator[list[Process]]:
    """Collects spawned processes and SIGKILLs whatever is still running at the end."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()


@asynccontextmanager
async def db_pool(settings: ServiceSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def write_probes(pool: asyncpg.Pool, seqs: range, note: str = "") -> None:
    """Commit one probe message per seq to the outbox, in one transaction."""
    async with unit_of_work(pool) as uow:
        for seq in seqs:
            uow.publish(ProbeSent(seq=seq, note=note))


async def queue_depth(settings: ServiceSettings, queue: str = QUEUE) -> int:
    """Ready messages in ``queue`` (unacknowledged deliveries are not counted)."""
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await conn.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await conn.close()


async def distinct_effects(settings: ServiceSettings) -> int:
    return int(await fetchval(settings, "SELECT count(DISTINCT message_id) FROM probe_effects"))


async def assert_each_applied_once(settings: ServiceSettings, expected: int) -> None:
    """Every outbox message has exactly one effect, and there are ``expected`` of them."""
    assert await fetchval(settings, "SELECT count(*) FROM outbox") == expected
    assert await fetchval(settings, "SELECT count(*) FROM probe_effects") == expected
    assert await fetchval(settings, "SELECT count(DISTINCT message_id) FROM probe_effects") == expected
    missing = await fetchval(
        settings,
        "SELECT count(*) FROM outbox o WHERE NOT EXISTS"
        " (SELECT 1 FROM probe_effects e WHERE e.message_id = o.message_id::text)",
    )
    assert missing == 0
    assert await fetchval(settings, "SELECT count(*) FROM inbox") == expected
    assert await fetchval(settings, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def assert_no_row_blamed(settings: ServiceSettings) -> None:
    """A broker outage must not count against rows: no attempts recorded, nothing parked."""
    blamed = await fetchval(
        settings, "SELECT count(*) FROM outbox WHERE attempts > 0 OR parked_at IS NOT NULL"
    )
    assert blamed == 0


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def relay_attempts(outcome: str) -> float:
    return counter("emeterai_relay_publish_attempts_total", service="probe", outcome=outcome)


def broker_channels(connection_name: str) -> list[int]:
    """Open channels of each connection of this session's vhost that has this client name."""
    out = rabbitmqctl("list_connections", "-q", "--no-table-headers", "vhost", "channels",
                      "client_properties").stdout
    counts: list[int] = []
    for line in out.splitlines():
        fields = line.split("\t", 2)
        if len(fields) == 3 and fields[0] == VHOST and f'{{"connection_name","{connection_name}"}}' in fields[2]:
            counts.append(int(fields[1]))
    return counts


async def assert_no_channel_leak() -> None:
    """The in-process harness (``running``) holds one consumer and one publisher channel; an
    outage must not leave an extra channel behind (it would stay open, reopened on every
    reconnect, one more per outage). A leaked channel is permanent, so waiting cannot hide it."""
    await eventually(lambda: asyncio.to_thread(lambda: broker_channels(HARNESS_CONNECTION) == [2]),
                     timeout_s=15, message="exactly the consumer and publisher channels")


async def stop_broker() -> None:
    await asyncio.to_thread(rabbitmqctl, "stop_app")


async def start_broker() -> None:
    await asyncio.to_thread(rabbitmqctl, "start_app")
    await asyncio.to_thread(wait_for_broker)


# --- broker outages ------------------------------------------------------------------------


async def test_broker_restart_mid_stream_loses_nothing(servers: str, broker_exclusive: None) -> None:
    """Producers commit continuously while RabbitMQ stops and starts; the same in-process
    relay and worker (never restarted) deliver every message, each applied exactly once."""
    settings = settings_for(ProbeSettings)
    await reset_service(SERVICE, settings)
    batch = 10
    produced = 0
    phase = "before"
    produced_in: dict[str, int] = {"before": 0, "down": 0, "after": 0}
    done = asyncio.Event()

    async with running(SERVICE, settings) as h:

        async def produce() -> None:
            nonlocal produced
            while not done.is_set():
                await write_probes(h.pool, range(produced, produced + batch))
                produced += batch
                produced_in[phase] += batch
                await asyncio.sleep(0.03)

        producer = asyncio.create_task(produce())
        try:
            await eventually(lambda: _at_least(distinct_effects(settings), 200), timeout_s=60,
                             message="the stream flowing before the outage")
            await stop_broker()
            phase = "down"
            # keep the outage long enough for several hundred commits while the broker is down
            await eventually(lambda: produced_in["down"] >= 400, timeout_s=60,
                             message="commits while the broker is down")
            await start_broker()
            phase = "after"
            await eventually(lambda: produced >= 1500 and produced_in["after"] >= 300, timeout_s=60,
                             message="commits after the restart")
        finally:
            done.set()
            await producer
        total = produced
        await eventually(lambda: _equals(distinct_effects(settings), total), timeout_s=120,
                         message=f"all {total} messages applied after the restart")
        await eventually(lambda: _equals(fetchval(
            settings, "SELECT count(*) FROM outbox WHERE sent_at IS NULL"), 0), timeout_s=30,
            message="outbox drained")
        await asyncio.sleep(1)  # let late redeliveries (if any) arrive before counting rows
        await assert_no_channel_leak()

    assert produced_in["down"] >= 400 and produced_in["after"] >= 300
    await assert_each_applied_once(settings, total)
    await assert_no_row_blamed(settings)
    assert await queue_depth(settings) == 0


async def test_relay_backoff_bounded_while_broker_down(servers: str, broker_exclusive: None) -> None:
    """During an ~8 s outage the relay probes a handful of times (capped exponential backoff,
    not a hot loop), blames no row, and drains the backlog by itself once the broker is back."""
    settings = settings_for(ProbeSettings, relay_backoff_max_s=2.0)
    await reset_service(SERVICE, settings)
    outcomes = ("ok", "partial", "failed", "unavailable")
    async with running(SERVICE, settings) as h:
        assert h.relay is not None
        await write_probes(h.pool, range(20))
        await eventually(lambda: _equals(distinct_effects(settings), 20), message="warm-up effects")
        assert h.relay.consecutive_broker_failures == 0
        before = {o: relay_attempts(o) for o in outcomes}

        await stop_broker()
        await write_probes(h.pool, range(20, 70))  # producers keep committing while it is down
        await eventually(lambda: h.relay is not None and h.relay.consecutive_broker_failures >= 1,
                         timeout_s=30, message="the relay noticing the outage")
        await asyncio.sleep(8)  # the outage itself; attempts are counted, not timed
        failures = h.relay.consecutive_broker_failures
        delta = {o: relay_attempts(o) - before[o] for o in outcomes}
        assert 1 <= failures < 15, delta
        assert 1 <= delta["unavailable"] < 15, delta
        # a failed batch also counts once as "failed": no other outcome may hide a hot loop
        assert delta["ok"] + delta["partial"] + delta["failed"] < 15, delta
        assert await fetchval(settings, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 50

        await start_broker()
        await eventually(lambda: _equals(distinct_effects(settings), 70), timeout_s=90,
                         message="backlog drained after start_app")
        await eventually(lambda: h.relay is not None and h.relay.consecutive_broker_failures == 0,
                         timeout_s=30, message="relay failure streak reset")
        await asyncio.sleep(1)
        await assert_no_channel_leak()

    await assert_each_applied_once(settings, 70)
    await assert_no_row_blamed(settings)


# --- crashes -------------------------------------------------------------------------------


async def test_worker_killed_between_commit_and_ack_applies_once(servers: str) -> None:
    """A worker SIGKILLed after its batch committed but before any ack: the broker redelivers
    the batch to the restarted worker and the inbox keeps each effect single."""
    settings = settings_for(ProbeSettings)
    await reset_service(SERVICE, settings)
    n = 40
    async with db_pool(settings) as pool:
        await write_probes(pool, range(n))
    async with running(SERVICE, settings, worker=False):
        await eventually(lambda: _equals(queue_depth(settings), n), message=f"{n} messages queued")

    with processes() as procs:
        procs.append(crashing := Process("worker", settings, "consumer.after_commit=kill"))
        assert await crashing.exit_code() == -signal.SIGKILL, crashing.output
        applied_before_crash = await distinct_effects(settings)
        assert 1 <= applied_before_crash <= n  # the batch committed before the kill
        # nothing was acked: every message goes back to the queue, the applied ones included
        await eventually(lambda: _equals(queue_depth(settings), n), message="unacked messages requeued")

        procs.append(worker := Process("worker", settings))
        await eventually(lambda: _equals(distinct_effects(settings), n), timeout_s=60,
                         message="all messages applied after the restart")
        await eventually(lambda: _equals(queue_depth(settings), 0), message="queue empty")
        await asyncio.sleep(1)
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code() == 0, worker.output

    await assert_each_applied_once(settings, n)
    redelivered = await fetchval(settings, "SELECT count(*) FROM inbox")
    assert redelivered == n


async def test_relay_killed_before_sent_mark_republishes_and_inbox_absorbs(servers: str) -> None:
    """A relay SIGKILLed after the broker confirmed its batch but before the sent mark committed:
    the rows stay pending, the restarted relay publishes them again, and the worker applies each
    message once, acking the second copy as a duplicate."""
    settings = settings_for(ProbeSettings)
    await reset_service(SERVICE, settings)
    n = 30
    async with db_pool(settings) as pool:
        await write_probes(pool, range(n))

    with processes() as procs:
        procs.append(crashing := Process("relay", settings, "relay.after_publish=kill"))
        assert await crashing.exit_code() == -signal.SIGKILL, crashing.output
        # confirmed by the broker, yet not marked sent
        await eventually(lambda: _equals(queue_depth(settings), n), message="first copies queued")
        assert await fetchval(settings, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == n

        procs.append(relay := Process("relay", settings))
        await eventually(lambda: _equals(fetchval(
            settings, "SELECT count(*) FROM outbox WHERE sent_at IS NULL"), 0), timeout_s=60,
            message="rows marked sent by the restarted relay")
        await eventually(lambda: _equals(queue_depth(settings), 2 * n), message="second copies queued")
        relay.signal(signal.SIGTERM)
        assert await relay.exit_code() == 0, relay.output

    duplicates_before = counter("emeterai_messages_consumed_total", queue=QUEUE, outcome="duplicate")
    async with running(SERVICE, settings, relay=False):
        await eventually(lambda: _equals(queue_depth(settings), 0), timeout_s=60, message="queue drained")
        await eventually(
            lambda: counter("emeterai_messages_consumed_total", queue=QUEUE, outcome="duplicate")
            - duplicates_before >= n, message="duplicates acked")
    duplicates = counter("emeterai_messages_consumed_total", queue=QUEUE, outcome="duplicate")
    assert duplicates - duplicates_before == n
    await assert_each_applied_once(settings, n)


# --- graceful shutdown ---------------------------------------------------------------------


async def test_worker_sigterm_with_handlers_in_progress(servers: str) -> None:
    """SIGTERM while handlers sleep inside their transactions: the worker finishes or rolls back
    what it holds and exits 0; nothing is half-applied, and a restarted worker applies the rest
    exactly once."""
    settings = settings_for(ProbeSettings, consumer_concurrency=4, consumer_batch_max=2,
                            shutdown_grace_s=10.0)
    await reset_service(SERVICE, settings)
    n = 80
    async with db_pool(settings) as pool:
        await write_probes(pool, range(n), note="sleep:300")
    async with running(SERVICE, settings, worker=False):
        await eventually(lambda: _equals(queue_depth(settings), n), message=f"{n} messages queued")

    with processes() as procs:
        procs.append(worker := Process("worker", settings))
        await eventually(lambda: _at_least(distinct_effects(settings), 1), timeout_s=60,
                         message="the worker applying messages")
        await eventually(lambda: _at_least(fetchval(
            settings, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            " AND state = 'idle in transaction'", settings.database_name), 1),
            message="handlers in progress (transactions open)")
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code() == 0, worker.output
        in_progress = re.search(r"worker stopping: (\d+) message\(s\) in progress", worker.output)
        assert in_progress is not None, worker.output
        assert int(in_progress.group(1)) >= 1, worker.output

    applied = await distinct_effects(settings)
    assert 1 <= applied < n
    # none half-applied: every inbox claim that committed carries its effect, and vice versa
    assert await fetchval(settings, "SELECT count(*) FROM inbox") == applied
    assert await fetchval(settings, "SELECT count(*) FROM probe_effects") == applied

    restarted = settings_for(ProbeSettings, consumer_concurrency=32, consumer_batch_max=2)
    async with running(SERVICE, restarted, relay=False):
        await eventually(lambda: _equals(distinct_effects(settings), n), timeout_s=60,
                         message="the rest applied by a restarted worker")
        await eventually(lambda: _equals(queue_depth(settings), 0), message="queue empty")
    await assert_each_applied_once(settings, n)


async def test_relay_sigterm_exits_cleanly(servers: str) -> None:
    """SIGTERM to a busy relay exits 0; what it did not publish is published later, once."""
    settings = settings_for(ProbeSettings)
    await reset_service(SERVICE, settings)
    produced = 0
    async with db_pool(settings) as pool:
        with processes() as procs:
            procs.append(relay := Process("relay", settings))
            while produced < 100:
                await write_probes(pool, range(produced, produced + 10))
                produced += 10
            await eventually(lambda: _at_least(fetchval(
                settings, "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL"), 50), timeout_s=60,
                message="the relay publishing")
            for _ in range(10):  # more work arriving while it stops
                await write_probes(pool, range(produced, produced + 10))
                produced += 10
            relay.signal(signal.SIGTERM)
            assert await relay.exit_code() == 0, relay.output

    async with running(SERVICE, settings):
        await eventually(lambda: _equals(distinct_effects(settings), produced), timeout_s=60,
                         message="every message applied after the relay restart")
        await asyncio.sleep(0.5)
    await assert_each_applied_once(settings, produced)


async def _at_least(value: Awaitable[int], floor: int) -> bool:
    return await value >= floor


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
