"""The relay's wake-up: a writer skips its NOTIFY while a relay is busy, and loses no row by it.

Migration ``003_outbox_wake``: a writer notifies when no relay holds the "busy" lock; while one
does, it skips the NOTIFY and holds the "skipped" lock until it commits; the relay's way out
(``outbox_relay_rest()``) waits for those writers, then says whether rows are pending.
Migration ``004_outbox_wake_no_queue``: a writer that meets a relay on its way out notifies
instead of queueing behind it.
"""

import asyncio
from typing import Any

from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import connect_with_retry
from emeterai_shared.uow import UnitOfWork, unit_of_work
from emeterai_testkit.fixtures import eventually, fetchval, reset_service, running, settings_for
from emeterai_testkit.probe import SERVICE, ProbeSent, ProbeSettings

BUSY = (1869903970, 1)


async def fresh(**overrides: Any) -> ServiceSettings:
    settings = settings_for(ProbeSettings, **overrides)
    await reset_service(SERVICE, settings)
    return settings


async def test_a_writer_skips_its_notify_while_a_relay_is_busy_and_the_relay_waits_for_it(servers: str) -> None:
    settings = await fresh()
    heard: list[str] = []
    listener = await connect_with_retry(settings.database_url)
    relay = await connect_with_retry(settings.database_url)
    writer = await connect_with_retry(settings.database_url)
    observer = await connect_with_retry(settings.database_url)

    async def notifications() -> int:
        await listener.fetchval("SELECT 1")  # a NOTIFY sent before this query is delivered by its end
        await asyncio.sleep(0)  # and its callback has run
        return len(heard)

    try:
        await listener.add_listener("outbox", lambda *_: heard.append("outbox"))
        async with writer.transaction():
            uow = UnitOfWork(writer)
            uow.publish(ProbeSent(seq=1))
            await uow.flush()
        assert await notifications() == 1  # no relay busy: the writer notifies
        await observer.execute("UPDATE outbox SET sent_at = now()")  # relayed, say

        assert await relay.fetchval("SELECT pg_try_advisory_lock($1, $2)", *BUSY) is True
        transaction = writer.transaction()
        await transaction.start()
        uow = UnitOfWork(writer)
        uow.publish(ProbeSent(seq=2))
        await uow.flush()  # the relay is busy: no NOTIFY, the "skipped" lock held until commit

        resting = asyncio.create_task(relay.fetchval("SELECT outbox_relay_rest()"))
        await eventually(lambda: observer.fetchval(
            "SELECT NOT granted FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND objid = 2",
            relay.get_server_pid()), message="the resting relay waits for the writer that skipped")
        assert not resting.done()
        await transaction.commit()
        assert await resting is True  # the skipped writer's row, committed while the relay waited
        assert await notifications() == 1  # it never notified

        async with writer.transaction():  # no relay busy any more: a writer notifies again
            uow = UnitOfWork(writer)
            uow.publish(ProbeSent(seq=3))
            await uow.flush()
        assert await notifications() == 2
        assert await relay.fetchval("SELECT pg_try_advisory_lock($1, $2)", *BUSY) is True  # "busy" was let go
    finally:
        for conn in (listener, relay, writer, observer):
            await conn.close()


async def test_rows_written_while_the_relay_is_busy_never_wait_for_the_polling_fallback(servers: str) -> None:
    """Writers racing a busy relay: every row arrives though the relay would poll only hourly."""
    settings = await fresh(relay_poll_interval_s=3600.0, relay_batch_size=7)
    async with running(SERVICE, settings, relay=True) as h:
        async def write(start: int) -> None:
            for seq in range(start, start + 40):
                async with unit_of_work(h.pool) as uow:
                    uow.publish(ProbeSent(seq=seq))
                await asyncio.sleep(0)

        await asyncio.gather(*(write(1000 * w) for w in range(4)))
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 160 FROM probe_effects"), timeout_s=30,
                         message="all 160 rows relayed and applied")
        assert await fetchval(settings, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_a_writer_never_waits_for_a_relay_on_its_way_out(servers: str) -> None:
    """A resting relay waits for a writer's open transaction; another writer meanwhile neither
    waits for it (nor for the first writer) nor loses its wake-up: it notifies."""
    settings = await fresh()
    heard: list[str] = []
    listener = await connect_with_retry(settings.database_url)
    relay = await connect_with_retry(settings.database_url)
    held = await connect_with_retry(settings.database_url)
    writer = await connect_with_retry(settings.database_url)
    observer = await connect_with_retry(settings.database_url)
    try:
        await listener.add_listener("outbox", lambda *_: heard.append("outbox"))
        assert await relay.fetchval("SELECT pg_try_advisory_lock($1, $2)", *BUSY) is True
        transaction = held.transaction()
        await transaction.start()
        uow = UnitOfWork(held)
        uow.publish(ProbeSent(seq=1))
        await uow.flush()  # skipped its NOTIFY, holds "skipped" until it commits
        resting = asyncio.create_task(relay.fetchval("SELECT outbox_relay_rest()"))
        await eventually(lambda: observer.fetchval(
            "SELECT NOT granted FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND objid = 2",
            relay.get_server_pid()), message="the resting relay waits for the open transaction")

        async with writer.transaction():  # would queue behind the resting relay with 003
            uow = UnitOfWork(writer)
            uow.publish(ProbeSent(seq=2))
            await asyncio.wait_for(uow.flush(), timeout=60)
        await listener.fetchval("SELECT 1")
        await asyncio.sleep(0)
        assert heard == ["outbox"]  # it notified instead of waiting
        assert not resting.done()
        await transaction.commit()
        assert await resting is True
    finally:
        for conn in (listener, relay, held, writer, observer):
            await conn.close()
