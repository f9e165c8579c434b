"""The outbox relay: publishes committed outbox rows to the broker, in order, at least once.

Loop: claim up to ``relay_batch_size`` pending rows (``FOR UPDATE SKIP LOCKED``, so several
relays share the work) and mark them sent in the same statement, publish them all with confirms
in flight together, and commit; the rows whose publish was not confirmed are put back to pending
in the same transaction before it commits, and a relay that dies before the commit leaves them
all pending (its transaction rolls back): at least once, as when the mark was a statement of its
own after the publish, with one round trip less per batch. It wakes on ``LISTEN outbox`` and
polls as a fallback.

A writer's NOTIFY is skipped while a relay is busy (migration ``003_outbox_wake``: a NOTIFY makes
the commits that send one wait for each other). The relay takes the "busy" advisory lock on its
LISTEN connection when it wakes, keeps relaying while rows keep coming (one cheap look between
batches), and before it sleeps leaves through ``outbox_relay_rest()``, which says whether rows are
pending once no writer that skipped its NOTIFY is still open: no row is left waiting for the
polling fallback. While such a writer is open the relay does not wait for it (migration
``005_outbox_rest_never_waits``): it stays busy, relays what others commit and looks again within
``REST_RETRY_MAX_S``. Without a LISTEN connection the relay is never busy and writers always notify.

Before each claim that does not follow a full batch the relay lingers (``relay_linger_s``, busy,
so writers skip their NOTIFY): at a few dozen rows per second, the rows committed meanwhile share
the claim, the transaction and the looks that a lone row paid for alone.

* Broker unreachable: nothing is marked, the rows stay pending, the relay sleeps with capped
  exponential backoff (one probe per sleep, never a hot loop) and resumes by itself.
* Back-pressure (a bounded queue is full and the broker nacks, ``BrokerBusy``) is not the
  row's fault: it stays pending with its ``attempts`` untouched, however long it lasts, and the
  relay holds back (capped exponential backoff on the back-pressure streak, never woken early by
  new rows, which would meet the same full queue) before the next batch; rows accepted in the
  same batch are marked sent. The age of the oldest pending row is what alerts.
* A row the broker refuses as such (unroutable: ``basic.return`` for a ``mandatory`` publish):
  the row's ``attempts`` grows; it is parked (``parked_at``) after ``relay_max_attempts`` and
  waits for an operator (``python -m <svc>_service outbox redrive``).
* Trace context stored with the row goes out in the AMQP headers.
* Housekeeping deletes sent rows after ``outbox_retention_s`` and inbox rows after
  ``inbox_retention_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC
from typing import Any

import asyncpg

from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import connect_with_retry
from emeterai_shared.failpoints import failpoint
from emeterai_shared.messaging.publisher import BrokerBusy, BrokerUnavailable, Publisher, PublishError
from emeterai_shared.messaging.topology import EVENTS
from emeterai_shared.stranding import refresh_outbox_gauge
from emeterai_shared.telemetry import (
    MESSAGES_PUBLISHED,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PARKED,
    RELAY_PUBLISH_ATTEMPTS,
)

log = logging.getLogger(__name__)

BACK_PRESSURE_MAX_WAIT_S = 5.0
"""Longest wait between tries while a queue is full: it drains within seconds once its consumers
catch up, and one nacked publish per held row every few seconds costs the broker nothing."""

# Claims the oldest pending rows no other relay holds and marks them sent, uncommitted until the
# batch is published; RETURNING has no order of its own, so the caller sorts by id.
_CLAIM = """UPDATE outbox SET sent_at = now()
            WHERE id = ANY(ARRAY(SELECT id FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL
                                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
            RETURNING id, message_id, message_type, routing_key, correlation_id, body, headers,
                      created_at, attempts"""


REST_RETRY_MAX_S = 0.05
"""Longest wait of a busy relay between two tries to rest while a writer that skipped its NOTIFY is
still open (5 ms after a batch, doubling while nothing comes): a row such a writer commits waits at
most this long."""

_BUSY_LOCK = (1869903970, 1)
"""The "busy" advisory lock (two-int key) of migration ``003_outbox_wake``."""
_PENDING = "SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL)"


def _doubling(first_s: float, n: int, cap_s: float) -> float:
    """``first_s`` doubled ``n`` times (at most ten), never past ``cap_s``: the relay's waits."""
    return min(cap_s, first_s * 2.0 ** min(n, 10))


class OutboxRelay:
    def __init__(self, *, pool: asyncpg.Pool, publisher: Publisher, settings: ServiceSettings):
        self._pool = pool
        self._publisher = publisher
        self._settings = settings
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self.consecutive_broker_failures = 0
        self.back_pressure_streak = 0
        """Batches in a row in which a full queue refused a row (``BrokerBusy``)."""
        self._back_pressured = False
        self._busy = False
        """This relay holds the "busy" lock on its LISTEN connection: writers skip their NOTIFY."""
        self._rest_refused = 0
        """Tries to rest in a row that found a writer that skipped its NOTIFY still open."""

    async def run(self) -> None:
        """Relay until ``stop()``; survives broker and database outages."""
        housekeeping = asyncio.create_task(self._housekeeping())
        resting = False
        full = False
        try:
            while not self._stopping.is_set():
                try:
                    await self._ensure_listener()
                    if resting:  # just left busy with rows pending: one batch before being busy again
                        resting = False
                    else:
                        await self._become_busy()
                    if not full and self._settings.relay_linger_s > 0:  # rows committed meanwhile join
                        await self._sleep(self._settings.relay_linger_s)
                        if self._stopping.is_set():
                            break
                    published = await self.relay_once()
                    full = published >= self._settings.relay_batch_size
                except BrokerUnavailable as exc:
                    await self._backoff(f"broker unavailable: {exc}")
                    continue
                except (OSError, asyncpg.PostgresConnectionError,
                        asyncpg.InterfaceError, asyncpg.CannotConnectNowError) as exc:
                    await self._backoff(f"database unavailable: {exc!r}")
                    continue
                except Exception as exc:
                    # Anything else (seen: asyncpg's InternalClientError while the pool resets a
                    # connection broken by a PostgreSQL restart) must not end the loop: a relay
                    # that stops relaying while its process stays healthy strands the outbox.
                    log.exception("relay batch failed unexpectedly; backing off and retrying")
                    await self._backoff(f"unexpected error: {exc!r}")
                    continue
                self.consecutive_broker_failures = 0
                if self._back_pressured:
                    await self._hold_back()
                    continue
                self.back_pressure_streak = 0
                if full:
                    continue
                try:
                    if self._busy:
                        if published and await self._pending():
                            continue  # rows came while busy (their writers did not notify)
                        self._wake.clear()  # a NOTIFY received before this is for a row _rest sees
                        if published:
                            self._rest_refused = 0  # rows flow: look again soon
                        rested = await self._rest()
                        if rested is None:  # a writer that skipped its NOTIFY is still open
                            await self._sleep_until_woken(self._rest_retry_delay())
                            continue
                        self._rest_refused = 0
                        if rested:
                            resting = True
                            continue
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("relay could not look for rows before sleeping: %r", exc)
                    self._drop_listener()  # and the busy lock with it
                    resting = True  # look again once, without being busy
                    continue
                await self._sleep_until_woken(self._settings.relay_poll_interval_s)
        finally:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
            await self._close_listener()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows were confirmed."""
        self._back_pressured = False
        async with self._pool.acquire() as conn, conn.transaction():
            rows = sorted(await conn.fetch(_CLAIM, self._settings.relay_batch_size), key=lambda r: r["id"])
            if not rows:
                return 0
            results = await asyncio.gather(*(self._publish(r) for r in rows), return_exceptions=True)
            failpoint("relay.after_publish")  # published and confirmed, sent mark not yet committed
            sent = [r["id"] for r, res in zip(rows, results, strict=True) if res is None]
            refused = [(r, res) for r, res in zip(rows, results, strict=True)
                       if isinstance(res, PublishError)]
            busy = [r for r, res in zip(rows, results, strict=True) if isinstance(res, BrokerBusy)]
            unexpected = [res for res in results if isinstance(res, BaseException)
                          and not isinstance(res, PublishError | BrokerBusy)]
            if len(sent) < len(rows):  # claimed as sent: the others go back to pending
                await conn.execute("UPDATE outbox SET sent_at = NULL WHERE id = ANY($1::bigint[])",
                                   [r["id"] for r, res in zip(rows, results, strict=True) if res is not None])
            if sent:
                MESSAGES_PUBLISHED.labels(self._settings.service_name).inc(len(sent))
            if refused:
                await conn.executemany(
                    """UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                              parked_at = CASE WHEN attempts + 1 >= $3 THEN now() END
                       WHERE id = $1""",
                    [(r["id"], str(err)[:1000], self._settings.relay_max_attempts)
                     for r, err in refused],
                )
                for r, err in refused:
                    log.warning("outbox row %s (%s) refused: %s", r["id"], r["message_type"], err)
        self._back_pressured = bool(busy)
        if busy:  # never counted toward parking: the rows are fine, a consumer queue is full
            log.warning("%d outbox row(s) held back by a full queue (first: %s, %s); kept pending",
                        len(busy), busy[0]["id"], busy[0]["message_type"])
        outcome = ("ok" if not (refused or unexpected or busy) else "busy" if not (refused or unexpected)
                   else "partial" if sent else "failed")
        RELAY_PUBLISH_ATTEMPTS.labels(self._settings.service_name, outcome).inc()
        if unexpected and not sent:
            first = unexpected[0]
            raise first if isinstance(first, BrokerUnavailable) else BrokerUnavailable(repr(first))
        return len(sent)

    async def _publish(self, row: asyncpg.Record) -> None:
        headers: dict[str, Any] = dict(row["headers"] or {})
        await self._publisher.publish(
            exchange=EVENTS,
            routing_key=row["routing_key"],
            body=bytes(row["body"]),
            message_id=str(row["message_id"]),
            message_type=row["message_type"],
            correlation_id=row["correlation_id"],
            headers=headers,
            timestamp=row["created_at"].astimezone(UTC),
        )

    async def _backoff(self, reason: str) -> None:
        self.consecutive_broker_failures += 1
        RELAY_PUBLISH_ATTEMPTS.labels(self._settings.service_name, "unavailable").inc()
        n = self.consecutive_broker_failures
        delay = _doubling(0.25, n, self._settings.relay_backoff_max_s)
        delay *= random.uniform(0.8, 1.2)
        log.warning("relay backing off %.1fs (failure %d): %s", delay, n, reason)
        await self._sleep(delay)

    async def _hold_back(self) -> None:
        """Wait before the next batch after back-pressure: a consumer queue is full, and trying
        again at once (or when a new row is written) would only be refused again."""
        self.back_pressure_streak += 1
        n = self.back_pressure_streak
        delay = _doubling(0.25, n, min(self._settings.relay_backoff_max_s, BACK_PRESSURE_MAX_WAIT_S))
        delay *= random.uniform(0.8, 1.2)
        log.info("relay holding back %.2fs (back-pressure, batch %d in a row)", delay, n)
        await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _sleep_until_woken(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _become_busy(self) -> None:
        """Take the "busy" lock on the LISTEN connection, unless held already or held by another
        relay (or probed by a writer at this instant: then writers keep notifying this time)."""
        if self._busy or self._listener is None:
            return
        try:
            self._busy = bool(await self._listener.fetchval("SELECT pg_try_advisory_lock($1, $2)", *_BUSY_LOCK))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("relay could not mark itself busy: %r", exc)
            self._drop_listener()

    async def _pending(self) -> bool:
        assert self._listener is not None
        pending: bool = await self._listener.fetchval(_PENDING)
        return pending

    async def _rest(self) -> bool | None:
        """Stop being busy; True when rows are pending (written while it was). None, still busy,
        when a writer that skipped its NOTIFY has not committed yet: its row is the relay's to see."""
        assert self._listener is not None
        pending: bool | None = await self._listener.fetchval("SELECT outbox_relay_rest()")
        self._busy = pending is None
        return pending

    def _rest_retry_delay(self) -> float:
        self._rest_refused += 1
        return _doubling(0.005, self._rest_refused - 1, min(REST_RETRY_MAX_S, self._settings.relay_poll_interval_s))

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.terminate()
        self._listener = None
        self._busy = False

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._busy = False  # a lock held on a closed connection is gone with it
        try:
            self._listener = await connect_with_retry(self._settings.database_url, timeout_s=5)
            await self._listener.add_listener("outbox", lambda *_: self._wake.set())
        except Exception as exc:  # polling still works without notifications
            log.warning("LISTEN outbox unavailable, polling only: %r", exc)
            self._listener = None

    async def _close_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            with contextlib.suppress(Exception):
                await self._listener.close()

    async def _housekeeping(self) -> None:
        while True:
            try:
                await refresh_outbox_metrics(self._pool, self._settings.service_name)
                await cleanup(self._pool, self._settings)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox housekeeping failed: %r", exc)
            await asyncio.sleep(min(self._settings.housekeeping_interval_s, 15))


async def outbox_stats(pool: asyncpg.Pool) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row: asyncpg.Record = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE sent_at IS NULL AND parked_at IS NULL) AS backlog,
                      coalesce(extract(epoch FROM now() - min(created_at)
                          FILTER (WHERE sent_at IS NULL AND parked_at IS NULL)), 0) AS oldest_s,
                      count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked
               FROM outbox WHERE sent_at IS NULL"""
        )
        return row


_PARKED_BEFORE: set[str] = set()


async def refresh_outbox_metrics(pool: asyncpg.Pool, service: str) -> None:
    row = await outbox_stats(pool)
    OUTBOX_BACKLOG.labels(service).set(row["backlog"])
    OUTBOX_OLDEST_AGE.labels(service).set(float(row["oldest_s"]))
    OUTBOX_PARKED.labels(service).set(row["parked"])
    if row["parked"] or service in _PARKED_BEFORE:  # per type: which money-carrying rows are parked
        await refresh_outbox_gauge(pool, service)
        _PARKED_BEFORE.add(service)


async def cleanup(pool: asyncpg.Pool, settings: ServiceSettings) -> None:
    """Delete sent outbox rows and inbox claims past their retention, in bounded chunks."""
    async with pool.acquire() as conn:
        await conn.execute(
            """DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NOT NULL
               AND sent_at < now() - make_interval(secs => $1) LIMIT 10000)""",
            settings.outbox_retention_s,
        )
        await conn.execute(
            """DELETE FROM inbox WHERE ctid IN (SELECT ctid FROM inbox
               WHERE received_at < now() - make_interval(secs => $1) LIMIT 10000)""",
            settings.inbox_retention_s,
        )


async def redrive_parked_rows(pool: asyncpg.Pool, ids: list[int] | None = None) -> int:
    """Return parked outbox rows (all, or the given ids) to the relay with fresh attempts."""
    async with pool.acquire() as conn:
        status: str = await conn.execute(
            """UPDATE outbox SET parked_at = NULL, attempts = 0
               WHERE parked_at IS NOT NULL AND ($1::bigint[] IS NULL OR id = ANY($1))""",
            ids,
        )
    return int(status.split()[-1])
