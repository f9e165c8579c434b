"""The transactional outbox and its relay, against the real PostgreSQL and RabbitMQ.

* State and outbox rows commit together: a rolled-back unit of work leaves no row and no effect,
  an outbox write that fails takes the state change down with it, and an uncommitted row is
  invisible to the relay until its transaction commits.
* The relay parks a row the broker keeps refusing (unroutable) after ``relay_max_attempts``
  while every other row keeps flowing; the ``outbox`` command reports and re-drives it.
"""

import asyncio
import itertools
import json
import sys
import uuid
from typing import Any

import aio_pika
import asyncpg
import pytest
from emeterai_shared.config import ServiceSettings
from emeterai_shared.messaging.publisher import BrokerBusy, Publisher
from emeterai_shared.messaging.topology import EVENTS, QueueSpec, declare_consumer_queue
from emeterai_shared.uow import UnitOfWork, unit_of_work
from emeterai_testkit.fixtures import (
    REPO_ROOT,
    eventually,
    fetchval,
    reset_service,
    running,
    settings_env,
    settings_for,
)
from emeterai_testkit.probe import QUEUE as PROBE_QUEUE
from emeterai_testkit.probe import SERVICE, ProbeSent, ProbeSettings

STATE_TABLE = "CREATE TABLE testsuite_state (id int PRIMARY KEY, note text NOT NULL)"


class Abort(Exception):
    """Raised inside a unit of work to roll it back."""


async def fresh_probe(**overrides: Any) -> ServiceSettings:
    settings = settings_for(ProbeSettings, **overrides)
    await reset_service(SERVICE, settings)
    return settings


async def probe_cli(settings: ServiceSettings, *args: str) -> list[Any]:
    """Run ``python -m emeterai_testkit.probe <args>`` and parse its JSON lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emeterai_testkit.probe", *args,
        env=settings_env(settings), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"probe {' '.join(args)} exited {proc.returncode}: {err.decode()}"
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def effects_of(settings: ServiceSettings, seq: int) -> int:
    count: int = await fetchval(settings, "SELECT count(*) FROM probe_effects WHERE seq = $1", seq)
    return count


async def test_rolled_back_unit_publishes_nothing_and_committed_unit_does(servers: str) -> None:
    settings = await fresh_probe()
    await fetchval(settings, STATE_TABLE)
    async with running(SERVICE, settings) as h:
        # Rolled back after its outbox row was written (flushed) inside the transaction.
        with pytest.raises(Abort):
            async with unit_of_work(h.pool) as uow:
                await uow.conn.execute("INSERT INTO testsuite_state VALUES (1, 'flushed')")
                flushed = uow.publish(ProbeSent(seq=1))
                await uow.flush()
                assert await uow.conn.fetchval("SELECT count(*) FROM outbox") == 1
                raise Abort
        # Rolled back while its message was still buffered.
        with pytest.raises(Abort):
            async with unit_of_work(h.pool) as uow:
                await uow.conn.execute("INSERT INTO testsuite_state VALUES (2, 'buffered')")
                buffered = uow.publish(ProbeSent(seq=2))
                raise Abort
        async with unit_of_work(h.pool) as uow:
            await uow.conn.execute("INSERT INTO testsuite_state VALUES (3, 'committed')")
            committed = uow.publish(ProbeSent(seq=3))

        await eventually(lambda: effects_of(settings, 3), timeout_s=15, message="committed effect")
        await eventually(
            lambda: fetchval(settings, "SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"),
            timeout_s=15, message="empty outbox backlog",
        )
        # The relay has nothing left to publish and the consumer applied what it got.
        rows = await fetchval(settings, "SELECT array_agg(message_id::text) FROM outbox")
        assert rows == [str(committed)]
        assert await fetchval(settings, "SELECT array_agg(id) FROM testsuite_state") == [3]
        assert await fetchval(settings, "SELECT array_agg(seq) FROM probe_effects") == [3]
        inbox = await fetchval(settings, "SELECT array_agg(message_id) FROM inbox")
        assert inbox == [str(committed)]
        assert str(flushed) not in inbox and str(buffered) not in inbox


async def test_outbox_write_failure_rolls_back_the_state_change(servers: str) -> None:
    settings = await fresh_probe()
    await fetchval(settings, STATE_TABLE)
    async with running(SERVICE, settings) as h:
        async with unit_of_work(h.pool) as uow:
            await uow.conn.execute("INSERT INTO testsuite_state VALUES (1, 'first')")
            first = uow.publish(ProbeSent(seq=1))
        # The outbox insert (at commit time) collides on message_id: the state goes too.
        with pytest.raises(asyncpg.UniqueViolationError):
            async with unit_of_work(h.pool) as uow:
                await uow.conn.execute("INSERT INTO testsuite_state VALUES (2, 'second')")
                uow.publish(ProbeSent(seq=2), message_id=first)
        await eventually(lambda: effects_of(settings, 1), timeout_s=15, message="first effect")
        await eventually(
            lambda: fetchval(settings, "SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"),
            timeout_s=15, message="empty outbox backlog",
        )
        assert await fetchval(settings, "SELECT array_agg(id) FROM testsuite_state") == [1]
        assert await fetchval(settings, "SELECT count(*) FROM outbox") == 1
        assert await fetchval(settings, "SELECT array_agg(seq) FROM probe_effects") == [1]


async def test_outbox_row_is_relayed_only_after_its_transaction_commits(servers: str) -> None:
    settings = await fresh_probe()
    async with running(SERVICE, settings) as h:
        async with h.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                held = UnitOfWork(conn)
                held.publish(ProbeSent(seq=10))
                await held.flush()  # written, lower id, not yet committed
                async with unit_of_work(h.pool) as uow:
                    uow.publish(ProbeSent(seq=11))
                await eventually(lambda: effects_of(settings, 11), timeout_s=15,
                                 message="effect of the later, committed row")
                assert await effects_of(settings, 10) == 0
                assert await fetchval(settings, "SELECT count(*) FROM outbox") == 1
            except BaseException:
                await tx.rollback()
                raise
            await tx.commit()
        await eventually(lambda: effects_of(settings, 10), timeout_s=15, message="effect after commit")
        await eventually(
            lambda: fetchval(settings, "SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"),
            timeout_s=15, message="empty outbox backlog",
        )
        assert await fetchval(settings, "SELECT count(*) FROM probe_effects") == 2
        assert await fetchval(settings, "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL") == 2


async def test_relay_parks_unroutable_row_while_others_flow_and_cli_redrives_it(servers: str) -> None:
    settings = await fresh_probe(relay_max_attempts=3)
    nobody = "testsuite.nobody_listens.v1"
    bad_id = uuid.uuid4()
    broker = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await broker.channel()
        async with running(SERVICE, settings) as h:
            async with unit_of_work(h.pool) as uow:  # one batch: the bad row first, good ones after
                await uow.conn.execute(
                    "INSERT INTO outbox (message_id, message_type, routing_key, body)"
                    " VALUES ($1, $2, $2, $3)", bad_id, nobody, b'{"unroutable": true}',
                )
                for seq in range(20):
                    uow.publish(ProbeSent(seq=seq))
            bad = "SELECT {} FROM outbox WHERE message_id = $1"
            await eventually(lambda: fetchval(settings, bad.format("parked_at IS NOT NULL"), bad_id),
                             timeout_s=15, message="unroutable row parked")
            assert await fetchval(settings, bad.format("attempts"), bad_id) == 3
            assert "NO_ROUTE" in await fetchval(settings, bad.format("last_error"), bad_id)
            # Rows written after the parking flow as well.
            async with unit_of_work(h.pool) as uow:
                for seq in range(20, 30):
                    uow.publish(ProbeSent(seq=seq))
            await eventually(lambda: fetchval(settings, "SELECT count(*) = 30 FROM probe_effects"),
                             timeout_s=15, message="30 effects")
            assert await fetchval(settings, "SELECT count(DISTINCT seq) FROM probe_effects") == 30
            assert await fetchval(settings, "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL") == 30
            assert await fetchval(settings, bad.format("sent_at IS NULL AND attempts = 3"), bad_id)

            [status] = await probe_cli(settings, "outbox", "status")
            assert status["parked"] == 1 and status["backlog"] == 0

            # Give the row somewhere to go, then re-drive it: it is published once.
            tap = await channel.declare_queue(exclusive=True)
            await tap.bind(EVENTS, routing_key=nobody)
            assert await probe_cli(settings, "outbox", "redrive") == [{"redriven": 1}]
            await eventually(lambda: fetchval(settings, bad.format("sent_at IS NOT NULL"), bad_id),
                             timeout_s=15, message="re-driven row sent")
            assert await fetchval(settings, bad.format("parked_at IS NULL AND attempts = 0"), bad_id)
            got = await eventually(lambda: tap.get(no_ack=True, fail=False), timeout_s=15,
                                   message="re-driven message on the broker")
            assert got.message_id == str(bad_id) and got.type == nobody
            assert await tap.get(no_ack=True, fail=False) is None
            assert await fetchval(settings, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await broker.close()


async def test_an_unexpected_error_in_a_batch_does_not_stop_the_relay(servers: str) -> None:
    """Seen in `make chaos`: asyncpg's InternalClientError while the pool reset a connection broken by
    a PostgreSQL restart ended the relay loop while its process stayed healthy."""
    from emeterai_shared.outbox import OutboxRelay

    settings = await fresh_probe(relay_backoff_max_s=0.5)
    async with running(SERVICE, settings, relay=False) as h:
        relay = OutboxRelay(pool=h.pool, publisher=h.publisher, settings=settings)
        real = relay.relay_once
        failures = 0

        async def first_batch_fails() -> int:
            nonlocal failures
            if failures == 0:
                failures += 1
                raise asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress")
            return await real()

        relay.relay_once = first_batch_fails  # type: ignore[method-assign]
        task = asyncio.create_task(relay.run())
        try:
            async with unit_of_work(h.pool) as uow:
                uow.publish(ProbeSent(seq=21))
            await eventually(lambda: effects_of(settings, 21), timeout_s=15, message="the effect after the failure")
            assert failures == 1 and not task.done()
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)


class CountingPublisher(Publisher):
    """The real publisher, noting each publish's outcome in ``events`` ("sent" or "busy")."""

    def __init__(self, *args: Any, events: list[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.events = events

    async def publish(self, **kwargs: Any) -> None:
        try:
            await super().publish(**kwargs)
        except BrokerBusy:
            self.events.append("busy")
            raise
        self.events.append("sent")


async def fill_up(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """Publish to ``queue`` (a confirm channel) until the broker nacks: it is full. Returns how many it took."""
    for taken in range(10):
        try:
            await channel.default_exchange.publish(aio_pika.Message(b"{}", message_id=f"filler-{taken}"),
                                                   routing_key=queue)
        except aio_pika.exceptions.DeliveryError:
            return taken
    raise AssertionError(f"{queue} never refused a publish")


async def test_a_full_queue_holds_a_row_in_the_outbox_with_backoff_and_never_parks_it(servers: str) -> None:
    """Back-pressure is not poison: a row refused by a full queue (``reject-publish``) far more
    times than ``relay_max_attempts`` stays pending, uncounted, and is delivered once the queue
    drains; the relay holds back between tries even while other rows flow and wake it."""
    from emeterai_shared.outbox import OutboxRelay, outbox_stats

    settings = await fresh_probe(relay_max_attempts=2, relay_backoff_max_s=0.2, relay_poll_interval_s=30)
    flowing = "testsuite.flowing.v1"
    broker = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await broker.channel()  # publisher confirms: a nack raises
        await channel.queue_delete(PROBE_QUEUE)
        bounded = await declare_consumer_queue(channel, QueueSpec(PROBE_QUEUE, (ProbeSent.TYPE,), max_length=1))
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(EVENTS, routing_key=flowing)
        assert await fill_up(channel, PROBE_QUEUE) >= 1

        events: list[str] = []
        async with running(SERVICE, settings, worker=False, relay=False) as h:
            publisher = CountingPublisher(h.connection, app_id="probe", events=events)
            relay = OutboxRelay(pool=h.pool, publisher=publisher, settings=settings)
            real_sleep = relay._sleep

            async def noted_sleep(seconds: float) -> None:
                events.append("wait")
                await real_sleep(seconds)

            relay._sleep = noted_sleep  # type: ignore[method-assign]
            task = asyncio.create_task(relay.run())
            try:
                async with unit_of_work(h.pool) as uow:  # the money: refused while the queue is full
                    held = uow.publish(ProbeSent(seq=1, note="payment captured"))
                row = "SELECT {} FROM outbox WHERE message_id = $1"
                await eventually(lambda: events.count("busy") >= 1, timeout_s=15, message="first refusal")
                # Rows for other queues keep flowing, each in a batch with the held row, each commit
                # waking the relay: the held row is tried again only after a wait, never at once.
                for n in range(3):
                    async with unit_of_work(h.pool) as uow:
                        await uow.conn.execute(
                            "INSERT INTO outbox (message_id, message_type, routing_key, body)"
                            " VALUES ($1, $2, $2, $3)", uuid.uuid4(), flowing, b'{"n": %d}' % n)
                    await eventually(lambda n=n: tap.get(no_ack=True, fail=False), timeout_s=15,
                                     message=f"flowing row {n} delivered")
                await eventually(lambda: events.count("busy") >= 5 * settings.relay_max_attempts, timeout_s=60,
                                 message="many more refusals than relay_max_attempts")
                assert await fetchval(settings, row.format("parked_at IS NULL AND sent_at IS NULL AND attempts = 0"),
                                      held)
                stats = await outbox_stats(h.pool)
                assert (stats["backlog"], stats["parked"]) == (1, 0)
                assert relay.back_pressure_streak >= 1
                refusals = [i for i, e in enumerate(events) if e == "busy"]
                hot = [(a, b) for a, b in itertools.pairwise(refusals) if "wait" not in events[a:b]]
                assert not hot, f"refused again without waiting: {events}"

                await bounded.purge()  # the consumers caught up
                await eventually(lambda: fetchval(settings, row.format("sent_at IS NOT NULL"), held), timeout_s=30,
                                 message="the held row delivered once the queue drained")
                got = await eventually(lambda: bounded.get(no_ack=True, fail=False), timeout_s=15,
                                       message="the held message in its queue")
                assert got.message_id == str(held)
                assert await fetchval(settings, row.format("parked_at IS NULL AND attempts = 0"), held)
            finally:
                relay.stop()
                await asyncio.wait_for(task, 15)
        await channel.queue_delete(PROBE_QUEUE)  # the next test declares it with its usual bound
    finally:
        await broker.close()
