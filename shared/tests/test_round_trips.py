"""Round trips to PostgreSQL per message in the messaging kernel, counted on a real connection.

A worker's cost per message is mostly SQL round trips (each ~120 us of client CPU plus ~80 us of
the server's), so these tests pin how many statements the kernel itself sends around the
handlers' own: a batch of messages claims its inbox rows in one statement, and the relay claims
and marks a batch of outbox rows in one. A change that adds a round trip fails here.
"""

import uuid
from datetime import UTC, datetime

from emeterai_shared.config import ServiceSettings
from emeterai_shared.messaging import Envelope, Subscription
from emeterai_shared.messaging.consumer import Consumer
from emeterai_shared.outbox import OutboxRelay
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import eventually, fetchval, reset_service, running, settings_for
from emeterai_testkit.probe import QUEUE, SERVICE, ProbeSent, ProbeSettings, on_probe_sent
from emeterai_testkit.roundtrips import counting_pool, logged

KERNEL_PER_BATCH = 3
"""BEGIN, the batch's inbox claim, COMMIT: the handlers' statements come on top."""
RELAY_PER_BATCH = 3
"""BEGIN, claim-and-mark, COMMIT, whatever the batch's size (a row not confirmed adds one)."""


async def fresh() -> ServiceSettings:
    settings = settings_for(ProbeSettings)
    await reset_service(SERVICE, settings)
    return settings


def envelope(message_id: str, seq: int) -> Envelope[ProbeSent]:
    return Envelope(message_id=message_id, type=ProbeSent.TYPE, correlation_id=None, timestamp=datetime.now(UTC),
                    attempt=1, headers={}, body=ProbeSent(seq=seq))


async def test_a_batch_claims_its_inbox_rows_in_one_statement_and_applies_each_message_once(servers: str) -> None:
    settings = await fresh()
    known = str(uuid.uuid4())
    await fetchval(settings, "INSERT INTO inbox (consumer, message_id, message_type) VALUES ($1, $2, $3) "
                             "RETURNING true", QUEUE, known, ProbeSent.TYPE)
    async with counting_pool(settings.database_url) as (pool, statements):
        consumer = Consumer(pool=pool, connection=None, publisher=None,  # type: ignore[arg-type]
                            subscriptions=[Subscription(QUEUE, ProbeSent, on_probe_sent)], settings=settings)
        sub = consumer._lanes[0].subscription
        warm_up = [envelope(str(uuid.uuid4()), 100 + i) for i in range(2)]
        assert await consumer._apply(sub, warm_up) == ["done", "done"]  # prepares the statements
        await logged(statements)

        new = [str(uuid.uuid4()) for _ in range(8)]
        ids, twin = sorted([*new, known]), new[3]
        batch = sorted([envelope(mid, i) for i, mid in enumerate(ids)] + [envelope(twin, 99)],
                       key=lambda e: e.message_id)  # as the consumer sorts a batch
        outcomes = await consumer._apply(sub, batch)
        sent = await logged(statements)
    print(f"batch of {len(batch)}: {len(sent)} statements")
    for q in sent:
        print("   ", " ".join(q.split())[:120])
    by_id: dict[str, list[str | BaseException]] = {}
    for env, outcome in zip(batch, outcomes, strict=True):
        by_id.setdefault(env.message_id, []).append(outcome)
    assert by_id[known] == ["duplicate"]  # claimed by an earlier delivery
    assert by_id[twin] == ["done", "duplicate"]  # the second copy in the same batch
    assert all(o == ["done"] for mid, o in by_id.items() if mid not in (known, twin))
    assert await fetchval(settings, "SELECT count(*) FROM probe_effects WHERE message_id = ANY($1::text[])",
                          ids) == len(ids) - 1
    handler_statements = len(ids) - 1  # one INSERT into probe_effects per message applied
    assert len(sent) <= KERNEL_PER_BATCH + handler_statements


async def test_the_relay_claims_and_marks_a_batch_in_one_statement(servers: str) -> None:
    settings = await fresh()
    async with running(SERVICE, settings, relay=False) as h, counting_pool(settings.database_url) as (pool, statements):
        relay = OutboxRelay(pool=pool, publisher=h.publisher, settings=settings)
        for rows in (1, 20):  # the first batch prepares the statements
            async with unit_of_work(h.pool) as uow:
                for seq in range(rows):
                    uow.publish(ProbeSent(seq=seq))
            await logged(statements)
            assert await relay.relay_once() == rows
            sent = await logged(statements)
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"),
                         message="every row marked sent")
    print(f"relay batch of 20: {len(sent)} statements")
    for q in sent:
        print("   ", " ".join(q.split())[:120])
    assert len(sent) <= RELAY_PER_BATCH
