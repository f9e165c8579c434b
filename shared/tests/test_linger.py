"""Batches that wait a moment for company: the relay's ``relay_linger_s`` and the consumer's
``consumer_linger_s``.

At a few dozen messages per second per queue, a relay that claims the moment it wakes and a
consumer loop that applies the moment a delivery arrives pay a whole transaction for each message.
Lingering a few milliseconds lets the next ones share it. These tests use lingers of seconds and
gaps of a fraction of one, so that the batch a message joins does not depend on the machine's
speed; without the linger each message here would go alone.
"""

import asyncio
import uuid

from emeterai_shared.db import connect_with_retry
from emeterai_shared.uow import UnitOfWork, unit_of_work
from emeterai_testkit.fixtures import eventually, fetchval, running
from emeterai_testkit.probe import QUEUE, SERVICE, ProbeSent

from .test_consumer import fresh, probe_message, publish_raw


async def test_rows_committed_while_the_relay_lingers_go_out_in_its_batch(servers: str) -> None:
    settings = await fresh(SERVICE, relay_linger_s=3.0, relay_poll_interval_s=3600.0, consumer_linger_s=0.0)
    writer = await connect_with_retry(settings.database_url)
    try:
        async with writer.transaction():  # pending before the relay starts: it wakes to it
            uow = UnitOfWork(writer)
            uow.publish(ProbeSent(seq=1))
            await uow.flush()
    finally:
        await writer.close()
    async with running(SERVICE, settings, worker=False, relay=True) as h:
        await asyncio.sleep(0.5)  # without a linger, the first row would be out by now
        async with unit_of_work(h.pool) as uow:
            uow.publish(ProbeSent(seq=2))
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"),
                         timeout_s=30, message="both rows relayed")
    assert await fetchval(settings, "SELECT count(*) FROM outbox") == 2
    assert await fetchval(settings, "SELECT count(DISTINCT sent_at) FROM outbox") == 1  # one claim


async def test_deliveries_arriving_while_a_consumer_lingers_share_its_transaction(servers: str) -> None:
    settings = await fresh(SERVICE, consumer_linger_s=3.0, consumer_concurrency=4)
    async with running(SERVICE, settings, relay=False) as h:
        channel = await h.connection.channel()
        await publish_raw(channel, QUEUE, [probe_message(1, str(uuid.uuid4()))])
        await asyncio.sleep(0.5)  # without a linger, the first message would be applied by now
        await publish_raw(channel, QUEUE, [probe_message(2, str(uuid.uuid4()))])
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 2 FROM probe_effects"),
                         timeout_s=30, message="both messages applied")
    # One transaction wrote both effects (and their inbox claims): the same xmin.
    assert await fetchval(settings, "SELECT count(DISTINCT xmin::text) FROM probe_effects") == 1
    assert await fetchval(settings, "SELECT count(DISTINCT xmin::text) FROM inbox") == 1


async def test_a_full_batch_never_waits_for_the_linger(servers: str) -> None:
    settings = await fresh(SERVICE, consumer_linger_s=3600.0, consumer_batch_max=2)
    async with running(SERVICE, settings, relay=False) as h:
        channel = await h.connection.channel()
        await publish_raw(channel, QUEUE, [probe_message(seq, str(uuid.uuid4())) for seq in (1, 2)])
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 2 FROM probe_effects"),
                         timeout_s=30, message="a full batch applied without lingering an hour")


async def test_a_worker_stops_while_lingering_and_the_delivery_comes_back(servers: str) -> None:
    settings = await fresh(SERVICE, consumer_linger_s=3600.0)
    message_id = str(uuid.uuid4())
    async with running(SERVICE, settings, relay=False) as h:
        channel = await h.connection.channel()
        await publish_raw(channel, QUEUE, [probe_message(7, message_id)])

        async def held() -> bool:
            looking = await h.connection.channel()  # a fresh channel: a robust one caches the count
            try:
                queue = await looking.declare_queue(QUEUE, passive=True)
                return queue.declaration_result.message_count == 0  # delivered, lingering, unacked
            finally:
                await looking.close()
        await eventually(held, message="the delivery taken by the lingering consumer")
        assert h.consumer is not None
        await asyncio.wait_for(h.consumer.stop(grace_s=30), timeout=60)  # the linger does not hold it
    assert await fetchval(settings, "SELECT count(*) FROM probe_effects") == 0
    again = settings.model_copy(update={"consumer_linger_s": 0.0})
    async with running(SERVICE, again, relay=False):
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 1 FROM probe_effects WHERE message_id = $1",
                                          message_id), timeout_s=30, message="the delivery, redelivered")


async def test_a_batch_never_waits_for_more_than_the_broker_lets_it_hold(servers: str) -> None:
    """With a prefetch of 2 the broker hands out two deliveries until one is acked: a batch of two
    is full, whatever ``consumer_batch_max`` says, and goes without lingering."""
    settings = await fresh(SERVICE, consumer_linger_s=3600.0, consumer_batch_max=32, prefetch=2)
    async with running(SERVICE, settings, relay=False) as h:
        channel = await h.connection.channel()
        await publish_raw(channel, QUEUE, [probe_message(seq, str(uuid.uuid4())) for seq in range(1, 5)])
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 4 FROM probe_effects"),
                         timeout_s=30, message="four messages through a prefetch of two, without lingering an hour")
