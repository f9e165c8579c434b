"""``UnitOfWork.last``: work deferred to the end of its transaction, against the real PostgreSQL.

A statement that locks a row every transaction of its kind needs (the order service's receipt
counter) goes last, so that a transaction never waits for another lock after taking it. In a
consumer batch the deferred work of every message runs after the batch's last handler, in order,
inside the transaction (rolled back with it); in ``unit_of_work`` after the body; and a unit made
on a bare connection runs it at once.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import create_pool
from emeterai_shared.messaging import Envelope, Subscription
from emeterai_shared.messaging.consumer import Consumer
from emeterai_shared.uow import UnitOfWork, unit_of_work
from emeterai_testkit.fixtures import reset_service, settings_for
from emeterai_testkit.probe import QUEUE, SERVICE, ProbeSent, ProbeSettings

SEEN: list[tuple[str, int]] = []


async def fresh() -> ServiceSettings:
    settings = settings_for(ProbeSettings)
    await reset_service(SERVICE, settings)
    return settings


def envelope(seq: int) -> Envelope[ProbeSent]:
    return Envelope(message_id=str(uuid.uuid4()), type=ProbeSent.TYPE, correlation_id=None,
                    timestamp=datetime.now(UTC), attempt=1, headers={}, body=ProbeSent(seq=seq))


async def deferring(uow: UnitOfWork, env: Envelope[ProbeSent]) -> None:
    """Records its call, and defers an effect (a row) to the end of the transaction."""
    seq = env.body.seq
    SEEN.append(("handler", seq))

    async def effect(conn: asyncpg.Connection) -> None:
        SEEN.append(("last", seq))
        await conn.execute("INSERT INTO probe_effects (message_id, seq, attempt) VALUES ($1, $2, 1)",
                           env.message_id, seq)
        if seq < 0:
            raise RuntimeError("the deferred work fails")
    await uow.last(effect)


async def test_a_batch_runs_every_message_s_deferred_work_after_its_last_handler(servers: str) -> None:
    settings = await fresh()
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        consumer = Consumer(pool=pool, connection=None, publisher=None,  # type: ignore[arg-type]
                            subscriptions=[Subscription(QUEUE, ProbeSent, deferring)], settings=settings)
        sub = consumer._lanes[0].subscription
        SEEN.clear()
        assert await consumer._apply(sub, [envelope(1), envelope(2), envelope(3)]) == ["done"] * 3
        assert SEEN == [("handler", 1), ("handler", 2), ("handler", 3), ("last", 1), ("last", 2), ("last", 3)]
        assert await pool.fetchval("SELECT count(*) FROM probe_effects") == 3

        # deferred work that fails rolls its batch back; each message is then applied alone
        SEEN.clear()
        outcomes: list[Any] = await consumer._apply(sub, [envelope(4), envelope(-5)])
        assert outcomes[0] == "done" and isinstance(outcomes[1], RuntimeError)
        assert SEEN == [("handler", 4), ("handler", -5), ("last", 4), ("last", -5),  # the batch, rolled back
                        ("handler", 4), ("last", 4), ("handler", -5), ("last", -5)]  # then one by one
        assert {r["seq"] for r in await pool.fetch("SELECT seq FROM probe_effects")} == {1, 2, 3, 4}

        # unit_of_work: after the body, inside the transaction; a bare unit: at once
        SEEN.clear()
        async with unit_of_work(pool) as uow:
            await deferring(uow, envelope(6))
            SEEN.append(("body ends", 6))
        async with pool.acquire() as conn:
            await deferring(UnitOfWork(conn), envelope(7))
            SEEN.append(("body ends", 7))
        assert SEEN == [("handler", 6), ("body ends", 6), ("last", 6), ("handler", 7), ("last", 7), ("body ends", 7)]
        assert await pool.fetchval("SELECT count(*) FROM probe_effects") == 6
    finally:
        await pool.close()
