"""Sends the sign-in texts from the worker process, straight from ``sms_outbox``.

A sign-in code's text used to travel as an ``order.sms_requested.v1`` message: an outbox row, a
relay publish, a broker delivery, an inbox claim and a transaction of its own around the send, one
text at a time. The row in ``sms_outbox`` is already durable and written atomically with the code,
so nothing needs the broker: ``tick`` (a periodic job of the worker, every
``sms_dispatch_interval_s``) leases every due text up to ``sms_concurrency`` in flight in one
statement, hands them to the notification adapter together (``SmsSender.send_all``: the
development sink writes them in one locked write, the gateway gets one request each, with its
own retries) and finishes the batch in one statement. A slow gateway holds only its batch; the
next tick claims more while fewer than ``sms_concurrency`` texts are in flight.

Outcomes, counted in ``emeterai_sms_sends_total{outcome}``: ``sent`` (row deleted), ``expired``
(its code expired before it could be sent: dropped, row deleted), ``failed`` (the adapter refused
it for good, or it was leased ``MAX_LEASES`` times without an outcome: kept with its reason and
without its text, alert on it). Delivery is at least once: a worker that dies after the send and
before the finish sends the text again once the lease runs out (the phone gets the same code twice).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg

from order_service.adapters.sms import BACKOFF_MAX_S, SmsSender, masked
from order_service.adapters.texts import Text, TextOutbox
from order_service.config import OrderSettings
from order_service.metrics import SMS_BACKLOG, SMS_OLDEST_AGE, SMS_SENDS

log = logging.getLogger(__name__)

MAX_LEASES = 5
"""A text leased this many times without an outcome (its worker kept dying) fails without a send."""
LEASE_MARGIN_S = 60.0


class TextDispatcher:
    def __init__(self, pool: asyncpg.Pool, sender: SmsSender, settings: OrderSettings):
        self._pool = pool
        self._sender = sender
        self._cap = max(1, settings.sms_concurrency)
        attempts = max(1, settings.sms_attempts)
        self.lease_s = settings.sms_timeout_s * attempts + BACKOFF_MAX_S * (attempts - 1) + LEASE_MARGIN_S
        self._in_flight = 0
        self._batches: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def tick(self) -> None:
        """Lease due texts while there is room, and start sending each lease's batch."""
        while not self._closing:
            room = self._cap - self._in_flight
            if room <= 0:
                return
            async with self._pool.acquire() as conn:
                batch = await TextOutbox(conn).claim(room, self.lease_s)
            if not batch:
                return
            self._in_flight += len(batch)
            task = asyncio.create_task(self._send(batch), name="sign-in-texts")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            if len(batch) < room:
                return  # nothing more is due

    async def _send(self, batch: list[Text]) -> None:
        try:
            now = datetime.now(UTC)
            expired = [t for t in batch if t.expires_at is not None and now >= t.expires_at]
            stale = [t for t in batch if t not in expired and t.attempts > MAX_LEASES]
            live = [t for t in batch if t not in expired and t not in stale]
            results = await self._sender.send_all([(t.phone, t.body) for t in live]) if live else []
            sent = [t for t, err in zip(live, results, strict=True) if err is None]
            failed = [(t.id, str(err)) for t, err in zip(live, results, strict=True) if err is not None]
            failed += [(t.id, f"leased {t.attempts - 1} times without an outcome") for t in stale]
            for t in expired:
                log.warning("text to %s dropped: its code expired before it could be sent", masked(t.phone))
            for t, err in zip(live, results, strict=True):
                if err is not None:
                    log.error("text to %s not sent: %s", masked(t.phone), err)
            for t in stale:
                log.error("text to %s not sent: leased %d times without an outcome", masked(t.phone),
                          t.attempts - 1)
            async with self._pool.acquire() as conn:
                await TextOutbox(conn).finish([t.id for t in sent + expired], failed)
            SMS_SENDS.labels("sent").inc(len(sent))
            SMS_SENDS.labels("expired").inc(len(expired))
            SMS_SENDS.labels("failed").inc(len(failed))
        except Exception:  # the database or the adapter broke: the lease brings the texts back
            log.exception("%d text(s) could not be sent or recorded; due again in %.0f s", len(batch), self.lease_s)
        finally:
            self._in_flight -= len(batch)

    async def settle(self) -> None:
        """Wait until the batches in flight now are sent and recorded."""
        await asyncio.gather(*list(self._batches), return_exceptions=True)

    async def refresh_metrics(self) -> None:
        async with self._pool.acquire() as conn:
            waiting, oldest_s, _ = await TextOutbox(conn).backlog()
        SMS_BACKLOG.set(waiting)
        SMS_OLDEST_AGE.set(oldest_s)

    async def close(self) -> None:
        """Stop claiming; let the batches in flight finish and be recorded (each send is bounded)."""
        self._closing = True
        batches = list(self._batches)
        if batches:
            _, late = await asyncio.wait(batches, timeout=self.lease_s - LEASE_MARGIN_S + 5)
            for task in late:
                task.cancel()
            await asyncio.gather(*batches, return_exceptions=True)
