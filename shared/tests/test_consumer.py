"""The consumer runtime against the real broker and database.

* Concurrent deliveries of one message id apply the handler exactly once (inbox), whether the
  copies meet in concurrent loops of one consumer, in two consumers on two connections, or in
  batches full of other messages.
* A transient failure climbs the delay tiers in order (``attempt`` 1, 2, 3...) and then succeeds;
  a handler failing every time parks after ``max_attempts``; ``PermanentError`` and undecodable
  deliveries park at once; re-driving (library and CLI) delivers a parked message again.
"""

import asyncio
import json
import random
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import asyncpg
import pytest
from emeterai_shared.config import ServiceSettings
from emeterai_shared.contracts import Message, message
from emeterai_shared.messaging import Envelope, PermanentError, Subscription
from emeterai_shared.messaging.parking import ParkedMessage, list_parked, redrive
from emeterai_shared.messaging.topology import delay_exchange, parking_queue
from emeterai_shared.runtime import ServiceDefinition
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
from emeterai_testkit.probe import QUEUE, SERVICE, ProbeSent, ProbeSettings, on_probe_sent
from pamqp import body as amqp_body
from pamqp import commands, frame, header
from prometheus_client import REGISTRY

FLAKY_QUEUE = "probe.on_flaky"


@message("testsuite.flaky_happened.v1")
class Flaky(Message):
    """Steers ``on_flaky``: fail transiently while ``attempt < fail_until``, or permanently."""

    key: str
    fail_until: int = 0
    permanent: bool = False
    outages: int = 0
    """The first ``outages`` calls meet a database that cannot take connections (it is restarting)."""


class FlakyError(RuntimeError):
    pass


CALLS: dict[str, list[int]] = defaultdict(list)  # Flaky.key → attempt of every handler call
REFUSED: set[int] = set()  # probe seqs the switchable handler fails on every attempt


async def on_flaky(uow: UnitOfWork, env: Envelope[Flaky]) -> None:
    CALLS[env.body.key].append(env.attempt)
    if len(CALLS[env.body.key]) <= env.body.outages:
        raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
    if env.body.permanent:
        raise PermanentError(f"{env.body.key} can never work")
    if env.attempt < env.body.fail_until:
        raise FlakyError(f"{env.body.key} failing on attempt {env.attempt}")
    await uow.conn.execute(
        "INSERT INTO probe_effects (message_id, seq, attempt) VALUES ($1, 0, $2)",
        env.message_id, env.attempt,
    )


async def on_probe_sent_unless_refused(uow: UnitOfWork, env: Envelope[ProbeSent]) -> None:
    if env.body.seq in REFUSED:
        raise FlakyError(f"probe {env.body.seq} refused for now")
    await on_probe_sent(uow, env)


FLAKY = ServiceDefinition(
    name="probe", title="flaky handler", settings_cls=ProbeSettings, migrations=SERVICE.migrations,
    dependencies=SERVICE.dependencies, subscriptions=(Subscription(FLAKY_QUEUE, Flaky, on_flaky),),
)
SWITCHABLE = ServiceDefinition(
    name="probe", title="probe with a switchable handler", settings_cls=ProbeSettings,
    migrations=SERVICE.migrations, dependencies=SERVICE.dependencies,
    subscriptions=(Subscription(QUEUE, ProbeSent, on_probe_sent_unless_refused),),
)


# --- helpers -------------------------------------------------------------------------------------


async def fresh(defn: ServiceDefinition, **overrides: Any) -> ServiceSettings:
    """Fresh database and queues; also empties the delay tiers so no copy from an earlier test
    can come back into this one."""
    settings = settings_for(ProbeSettings, **overrides)
    await reset_service(defn, settings)
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await conn.channel()
        for delay in settings.retry_delays_ms:
            tier = await channel.declare_queue(delay_exchange(delay), passive=True)
            await tier.purge()
    finally:
        await conn.close()
    return settings


def consumed(queue: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(
        "emeterai_messages_consumed_total", {"queue": queue, "outcome": outcome}
    ) or 0.0


async def publish_raw(
    channel: aio_pika.abc.AbstractChannel, queue: str, messages: Iterable[aio_pika.Message]
) -> None:
    """Publish straight to ``queue`` (default exchange), all confirms in flight together."""
    await asyncio.gather(*(
        channel.default_exchange.publish(m, routing_key=queue, mandatory=True) for m in messages
    ))


def probe_message(seq: int, message_id: str, **overrides: Any) -> aio_pika.Message:
    values: dict[str, Any] = {
        "body": ProbeSent(seq=seq).to_json(), "message_id": message_id, "type": ProbeSent.TYPE,
        "delivery_mode": aio_pika.DeliveryMode.PERSISTENT, "content_type": "application/json",
    }
    values.update(overrides)
    return aio_pika.Message(**values)


async def publish_without_message_id(amqp_url: str, queue: str, payload: bytes, message_type: str) -> None:
    """Publish like a foreign client that sets no ``message_id``: aiormq always fills one in,
    so this speaks AMQP 0-9-1 frames (pamqp) over a plain socket."""
    url = urlsplit(amqp_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 5672)

    async def expect(kind: Any) -> Any:
        while True:
            head = await reader.readexactly(7)
            rest = await reader.readexactly(int.from_bytes(head[3:7], "big") + 1)
            got = frame.unmarshal(head + rest)[2]
            if isinstance(got, kind):
                return got
            assert not isinstance(got, commands.Connection.Close | commands.Channel.Close), got

    def send(channel: int, *values: Any) -> None:
        for value in values:
            writer.write(frame.marshal(value, channel))

    try:
        writer.write(frame.marshal(header.ProtocolHeader(), 0))
        await expect(commands.Connection.Start)
        credentials = f"\0{unquote(url.username or '')}\0{unquote(url.password or '')}"
        send(0, commands.Connection.StartOk(mechanism="PLAIN", response=credentials))
        tune = await expect(commands.Connection.Tune)
        send(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0),
             commands.Connection.Open(virtual_host=unquote(url.path[1:]) or "/"))
        await expect(commands.Connection.OpenOk)
        send(1, commands.Channel.Open())
        await expect(commands.Channel.OpenOk)
        send(1, commands.Confirm.Select())
        await expect(commands.Confirm.SelectOk)
        properties = commands.Basic.Properties(content_type="application/json", delivery_mode=2,
                                               message_type=message_type)
        send(1, commands.Basic.Publish(exchange="", routing_key=queue, mandatory=True),
             header.ContentHeader(0, len(payload), properties), amqp_body.ContentBody(payload))
        confirm = await expect(commands.Basic.Ack | commands.Basic.Nack | commands.Basic.Return)
        assert isinstance(confirm, commands.Basic.Ack), confirm
        send(0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        await expect(commands.Connection.CloseOk)
    finally:
        writer.close()


async def parked_count(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """Ready messages in the parking queue of ``queue``. A fresh channel each time: a robust
    channel answers a repeated passive declare from its cache, with the first count."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(parking_queue(queue), passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await channel.close()


async def wait_parked(
    connection: aio_pika.abc.AbstractRobustConnection, queue: str, n: int
) -> list[ParkedMessage]:
    """Wait until ``queue`` has parked at least ``n`` messages; exactly ``n`` must be there."""

    async def enough() -> bool:
        return await parked_count(connection, queue) >= n

    await eventually(enough, timeout_s=15, message=f"{n} parked message(s) in {queue}")
    parked = await list_parked(connection, queue)
    assert len(parked) == n, [p.summary() for p in parked]
    return parked


async def effects(settings: ServiceSettings, where: str = "true", *args: Any) -> int:
    n: int = await fetchval(settings, f"SELECT count(*) FROM probe_effects WHERE {where}", *args)
    return n


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


async def publish_flaky(pool: Any, body: Flaky) -> str:
    async with unit_of_work(pool) as uow:
        mid = uow.publish(body)
    return str(mid)


# --- exactly once under concurrent duplicates -----------------------------------------------------


async def test_concurrent_duplicates_in_one_consumer_apply_once(servers: str) -> None:
    """Copies queued back to back, taken by four loops at once (one message per batch)."""
    settings = await fresh(SERVICE, consumer_concurrency=4, consumer_batch_max=1)
    ids = [str(uuid.uuid4()) for _ in range(25)]
    done, dups = consumed(QUEUE, "done"), consumed(QUEUE, "duplicate")
    broker = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await broker.channel()
        await publish_raw(channel, QUEUE, (probe_message(i, mid) for i, mid in enumerate(ids)
                                           for _ in range(2)))
        async with running(SERVICE, settings, relay=False):  # all 50 are waiting: loops race
            await eventually(lambda: consumed(QUEUE, "done") - done + consumed(QUEUE, "duplicate")
                             - dups >= 50, timeout_s=15, message="50 deliveries settled")
        assert consumed(QUEUE, "done") - done == 25
        assert consumed(QUEUE, "duplicate") - dups == 25
        assert await effects(settings) == 25
        assert await fetchval(settings, "SELECT count(DISTINCT message_id) FROM probe_effects") == 25
        assert await fetchval(settings, "SELECT count(*) FROM inbox") == 25
        assert await parked_count(broker, QUEUE) == 0
    finally:
        await broker.close()


async def test_concurrent_duplicates_across_two_consumers_apply_once(servers: str) -> None:
    """Two Consumer instances, two connections, two pools; copies published together."""
    settings = await fresh(SERVICE, consumer_concurrency=2, consumer_batch_max=1)
    ids = [str(uuid.uuid4()) for _ in range(25)]
    done, dups = consumed(QUEUE, "done"), consumed(QUEUE, "duplicate")
    broker = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await broker.channel()
        async with running(SERVICE, settings, relay=False) as a, \
                running(SERVICE, settings, relay=False) as b:
            assert a.connection is not b.connection and a.pool is not b.pool
            await publish_raw(channel, QUEUE, (probe_message(i, mid) for i, mid in enumerate(ids)
                                               for _ in range(2)))
            await eventually(lambda: consumed(QUEUE, "done") - done + consumed(QUEUE, "duplicate")
                             - dups >= 50, timeout_s=15, message="50 deliveries settled")
        assert consumed(QUEUE, "done") - done == 25
        assert consumed(QUEUE, "duplicate") - dups == 25
        assert await effects(settings) == 25
        assert await fetchval(settings, "SELECT count(DISTINCT message_id) FROM probe_effects") == 25
        assert await fetchval(settings, "SELECT count(*) FROM inbox") == 25
        assert await parked_count(broker, QUEUE) == 0
    finally:
        await broker.close()


@pytest.mark.parametrize("two_consumers", [False, True], ids=["one-consumer", "two-consumers"])
async def test_duplicates_mixed_into_batches_apply_once(servers: str, two_consumers: bool) -> None:
    """150 distinct messages, 50 of them sent twice, shuffled: batches mix fresh messages with
    duplicates of messages in the same batch and in batches applied concurrently."""
    settings = await fresh(SERVICE, consumer_concurrency=3, consumer_batch_max=16)
    ids = [str(uuid.uuid4()) for _ in range(150)]
    copies = [(i, mid) for i, mid in enumerate(ids)] + [(i, ids[i]) for i in range(0, 150, 3)]
    random.Random(7).shuffle(copies)
    done, dups = consumed(QUEUE, "done"), consumed(QUEUE, "duplicate")
    broker = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await broker.channel()
        async with running(SERVICE, settings, relay=False):
            if two_consumers:
                async with running(SERVICE, settings, relay=False):
                    await publish_raw(channel, QUEUE, (probe_message(i, mid) for i, mid in copies))
                    await eventually(lambda: consumed(QUEUE, "done") - done + consumed(QUEUE, "duplicate")
                                     - dups >= 200, timeout_s=15, message="200 deliveries settled")
            else:
                await publish_raw(channel, QUEUE, (probe_message(i, mid) for i, mid in copies))
                await eventually(lambda: consumed(QUEUE, "done") - done + consumed(QUEUE, "duplicate")
                                 - dups >= 200, timeout_s=15, message="200 deliveries settled")
        assert consumed(QUEUE, "done") - done == 150
        assert consumed(QUEUE, "duplicate") - dups == 50
        assert await effects(settings) == 150
        assert await fetchval(settings, "SELECT count(DISTINCT message_id) FROM probe_effects") == 150
        assert await fetchval(settings, "SELECT count(DISTINCT seq) FROM probe_effects") == 150
        assert await parked_count(broker, QUEUE) == 0
    finally:
        await broker.close()


# --- retries, parking, re-drive -------------------------------------------------------------------


async def test_transient_failure_climbs_the_delay_tiers_in_order_then_succeeds(servers: str) -> None:
    settings = await fresh(FLAKY, retry_delays_ms=[200, 400, 800])
    assert settings.max_attempts == 4
    key = f"flaky-{uuid.uuid4()}"
    broker = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await broker.channel()
        taps = {}  # a copy of every message entering each tier (fanout exchanges)
        for delay in settings.retry_delays_ms:
            taps[delay] = await channel.declare_queue(exclusive=True)
            await taps[delay].bind(delay_exchange(delay))
        async with running(FLAKY, settings) as h:
            mid = await publish_flaky(h.pool, Flaky(key=key, fail_until=4))
            await eventually(lambda: effects(settings, "message_id = $1", mid), timeout_s=15,
                             message="effect after three failures")
        assert CALLS[key] == [1, 2, 3, 4]
        assert await effects(settings) == 1
        assert await fetchval(settings, "SELECT attempt FROM probe_effects") == 4
        for n, delay in enumerate(settings.retry_delays_ms, start=1):
            copy = await taps[delay].get(no_ack=True, fail=False)
            assert copy is not None, f"nothing went through the {delay} ms tier"
            assert copy.message_id == mid and copy.type == Flaky.TYPE
            assert copy.headers["attempt"] == n + 1
            assert f"failing on attempt {n}" in str(copy.headers["last_error"])
            assert await taps[delay].get(no_ack=True, fail=False) is None
        assert await parked_count(broker, FLAKY_QUEUE) == 0
    finally:
        await broker.close()


async def test_a_database_outage_longer_than_the_retry_tiers_never_parks_nor_spends_attempts(servers: str) -> None:
    """An outage is not the message's fault (seen in make chaos: a stamping job parked after its
    four fast attempts all met a restarting PostgreSQL, leaving the job QUEUED for good)."""
    settings = await fresh(FLAKY, retry_delays_ms=[100, 200])
    outages = settings.max_attempts * 2  # more than every attempt the tiers allow
    key = f"outage-{uuid.uuid4()}"
    deferred = consumed(FLAKY_QUEUE, "deferred")
    async with running(FLAKY, settings) as h:
        mid = await publish_flaky(h.pool, Flaky(key=key, outages=outages))
        await eventually(lambda: effects(settings, "message_id = $1", mid), timeout_s=60,
                         message="effect once the database is back")
        assert await parked_count(h.connection, FLAKY_QUEUE) == 0
    assert CALLS[key] == [1] * (outages + 1)  # every call met the outage on attempt 1, then applied
    assert await fetchval(settings, "SELECT attempt FROM probe_effects WHERE message_id = $1", mid) == 1
    assert consumed(FLAKY_QUEUE, "deferred") - deferred == outages


@pytest.mark.parametrize("tiers", [[200, 400, 800], [150, 300]], ids=["3-tiers", "2-tiers"])
async def test_always_failing_handler_parks_after_max_attempts(servers: str, tiers: list[int]) -> None:
    settings = await fresh(FLAKY, retry_delays_ms=tiers)
    key = f"doomed-{uuid.uuid4()}"
    async with running(FLAKY, settings) as h:
        mid = await publish_flaky(h.pool, Flaky(key=key, fail_until=1_000))
        [parked] = await wait_parked(h.connection, FLAKY_QUEUE, 1)
    assert CALLS[key] == list(range(1, settings.max_attempts + 1))
    assert settings.max_attempts == len(tiers) + 1
    assert parked.message_id == mid and parked.type == Flaky.TYPE
    assert parked.attempt == settings.max_attempts
    assert parked.reason.startswith(f"gave up after {settings.max_attempts} attempts: FlakyError")
    assert Flaky.model_validate_json(parked.body) == Flaky(key=key, fail_until=1_000)
    assert await effects(settings) == 0
    assert await fetchval(settings, "SELECT count(*) FROM inbox") == 0


async def test_permanent_error_parks_at_once(servers: str) -> None:
    settings = await fresh(FLAKY)
    key = f"permanent-{uuid.uuid4()}"
    async with running(FLAKY, settings) as h:
        mid = await publish_flaky(h.pool, Flaky(key=key, permanent=True))
        [parked] = await wait_parked(h.connection, FLAKY_QUEUE, 1)
    assert CALLS[key] == [1]
    assert parked.message_id == mid
    assert parked.reason == f"permanent failure: {key} can never work"
    assert await effects(settings) == 0


async def test_undecodable_messages_park_at_once_and_neighbours_apply(servers: str) -> None:
    settings = await fresh(SERVICE)
    no_id_body = b'{"seq": 5, "note": "no message id"}'
    forged = [
        probe_message(1, "bad-json", body=b"{not json"),
        probe_message(2, "bad-model", body=b'{"seq": "three", "note": 4}'),
        probe_message(3, "unknown-type", type="testsuite.nobody_knows.v1"),
        probe_message(4, "no-type", type=None),
    ]
    reasons = {  # parked body → expected start of parked_reason
        b"{not json": "undecodable: invalid platform.probe_sent.v1",
        b'{"seq": "three", "note": 4}': "undecodable: invalid platform.probe_sent.v1",
        forged[2].body: "undecodable: queue probe.on_probe_sent takes platform.probe_sent.v1, got "
                        "'testsuite.nobody_knows.v1'",
        forged[3].body: "undecodable: queue probe.on_probe_sent takes platform.probe_sent.v1, got None",
        no_id_body: "undecodable: message has no message_id",
    }
    good = str(uuid.uuid4())
    broker = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await broker.channel()
        # All queued before the worker starts, so they share batches with a valid message.
        await publish_without_message_id(settings.amqp_url, QUEUE, no_id_body, ProbeSent.TYPE)
        await publish_raw(channel, QUEUE, [*forged, probe_message(6, good)])
        async with running(SERVICE, settings, relay=False) as h:
            await eventually(lambda: effects(settings, "message_id = $1", good), timeout_s=15,
                             message="the valid neighbour applied")
            parked = await wait_parked(h.connection, QUEUE, len(reasons))
        by_body = {p.body: p for p in parked}
        assert set(by_body) == set(reasons)
        for body, p in by_body.items():
            assert p.reason.startswith(reasons[body]), (body, p.reason)
            assert p.attempt is None  # parked on the first delivery, never retried
        assert {by_body[m.body].message_id for m in forged} == {m.message_id for m in forged}
        assert await effects(settings) == 1
        assert await fetchval(settings, "SELECT array_agg(message_id) FROM inbox") == [good]
    finally:
        await broker.close()


async def test_library_redrive_delivers_parked_messages_again(servers: str) -> None:
    settings = await fresh(SWITCHABLE, retry_delays_ms=[100, 200, 300])  # 4 attempts
    REFUSED.update({101, 102})
    try:
        async with running(SWITCHABLE, settings) as h:
            async with unit_of_work(h.pool) as uow:
                first = str(uow.publish(ProbeSent(seq=101)))
                second = str(uow.publish(ProbeSent(seq=102)))
                uow.publish(ProbeSent(seq=103))
            await eventually(lambda: effects(settings, "seq = 103"), timeout_s=15, message="seq 103")
            parked = await wait_parked(h.connection, QUEUE, 2)
            assert {p.message_id for p in parked} == {first, second}
            assert all(p.reason.startswith("gave up after 4 attempts: FlakyError: probe 10")
                       and p.attempt == 4 for p in parked)
            REFUSED.clear()  # the "fix" is deployed

            assert await redrive(h.connection, h.publisher, QUEUE, {second}) == [second]
            await eventually(lambda: effects(settings, "seq = 102"), timeout_s=15, message="seq 102")
            [still] = await wait_parked(h.connection, QUEUE, 1)
            assert still.message_id == first

            assert await redrive(h.connection, h.publisher, QUEUE) == [first]
            await eventually(lambda: effects(settings, "seq = 101"), timeout_s=15, message="seq 101")
            await wait_parked(h.connection, QUEUE, 0)
        assert await effects(settings) == 3
        assert await effects(settings, "seq IN (101, 102) AND attempt = 1") == 2  # fresh attempts
    finally:
        REFUSED.clear()


async def test_cli_lists_and_redrives_parked_messages(servers: str) -> None:
    settings = await fresh(SWITCHABLE, retry_delays_ms=[100, 200, 300])  # 4 attempts
    REFUSED.add(201)
    try:
        async with running(SWITCHABLE, settings) as h:
            async with unit_of_work(h.pool) as uow:
                mid = str(uow.publish(ProbeSent(seq=201, note="parked")))
            await wait_parked(h.connection, QUEUE, 1)
            REFUSED.clear()

            [row] = await probe_cli(settings, "parking", "list")
            assert row["queue"] == QUEUE and row["message_id"] == mid
            assert row["type"] == ProbeSent.TYPE
            assert row["reason"] == "gave up after 4 attempts: FlakyError: probe 201 refused for now"
            assert row["attempt"] == 4
            assert await parked_count(h.connection, QUEUE) == 1  # listing keeps it parked

            [moved] = await probe_cli(settings, "parking", "redrive", "--queue", QUEUE, "--all")
            assert moved == {"queue": QUEUE, "redriven": [mid]}
            await eventually(lambda: effects(settings, "message_id = $1", mid), timeout_s=15,
                             message="re-driven message applied")
            assert await parked_count(h.connection, QUEUE) == 0
        assert await effects(settings) == 1
        assert await effects(settings, "attempt = 1") == 1  # a fresh first attempt
    finally:
        REFUSED.clear()
