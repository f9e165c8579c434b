"""The relay's wake-up: a writer skips its NOTIFY while a relay is busy, and loses no row by it.

Migration ``003_outbox_wake``: a writer notifies when no relay holds the "busy" lock; while one
does, it skips the NOTIFY and holds the "skipped" lock until it commits; the relay's way out
(``outbox_relay_rest()``) waits for those writers, then says whether rows are pending.
Migration ``004_outbox_wake_no_queue``: a writer that meets a relay on its way out notifies
instead of queueing behind it. Migration ``005_outbox_rest_never_waits``: the relay's way out only
tries; while a writer that skipped is open it stays busy and says so (NULL) instead of waiting.
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


async def test_a_writer_skips_its_notify_while_a_relay_is_busy_and_the_relay_stays_busy_for_it(servers: str) -> None:
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

        # The writer is still open: the relay does not wait for it, it stays busy and says so.
        assert await asyncio.wait_for(relay.fetchval("SELECT outbox_relay_rest()"), timeout=60) is None
        assert await observer.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND objid = 1 AND granted",
            relay.get_server_pid()) == 1  # still "busy": the next writer skips its NOTIFY too
        await transaction.commit()
        assert await relay.fetchval("SELECT outbox_relay_rest()") is True  # the skipped writer's row
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
    """The instant a relay holds "skipped" on its way out, a writer neither waits for it nor loses
    its wake-up: it notifies."""
    settings = await fresh()
    heard: list[str] = []
    listener = await connect_with_retry(settings.database_url)
    relay = await connect_with_retry(settings.database_url)
    writer = await connect_with_retry(settings.database_url)
    try:
        await listener.add_listener("outbox", lambda *_: heard.append("outbox"))
        assert await relay.fetchval("SELECT pg_try_advisory_lock($1, $2)", *BUSY) is True
        assert await relay.fetchval("SELECT pg_try_advisory_lock($1, 2)", BUSY[0]) is True  # inside rest
        async with writer.transaction():
            uow = UnitOfWork(writer)
            uow.publish(ProbeSent(seq=2))
            await asyncio.wait_for(uow.flush(), timeout=60)
        await listener.fetchval("SELECT 1")
        await asyncio.sleep(0)
        assert heard == ["outbox"]  # it notified instead of waiting
    finally:
        for conn in (listener, relay, writer):
            await conn.close()


async def test_a_transaction_held_open_never_stops_the_relay(servers: str) -> None:
    """A writer that skipped its NOTIFY and stays open (a slow request, a session left in a
    transaction) holds "skipped": the relay keeps relaying what others commit meanwhile, and the
    held row once it commits. Before migration 005 the relay waited for that writer to rest."""
    settings = await fresh(relay_poll_interval_s=3600.0)
    async with running(SERVICE, settings, relay=True) as h:
        async with h.pool.acquire() as held:
            transaction = held.transaction()
            await transaction.start()
            try:
                # What a writer that met a busy relay holds until it commits.
                await held.execute("SELECT pg_advisory_xact_lock_shared($1, 2)", BUSY[0])
                uow = UnitOfWork(held)
                uow.publish(ProbeSent(seq=10))
                await uow.flush()
                for seq in (11, 12):
                    async with unit_of_work(h.pool) as later:
                        later.publish(ProbeSent(seq=seq))
                await eventually(lambda: fetchval(settings, "SELECT count(*) = 2 FROM probe_effects"),
                                 timeout_s=30, message="the rows committed while one transaction is held open")
                assert await fetchval(settings, "SELECT count(*) FROM probe_effects WHERE seq = 10") == 0
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 3 FROM probe_effects"),
                         timeout_s=30, message="the held row, once committed")
