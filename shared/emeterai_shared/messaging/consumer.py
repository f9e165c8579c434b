"""The consumer runtime: inbox + handler in one transaction, ack after commit, retries, parking.

Each subscription owns one quorum queue. Deliveries are buffered and taken in small batches by
``consumer_concurrency`` loops; a batch is applied in **one** PostgreSQL transaction (commits are
the scarce resource). One loop at a time gathers a batch, waiting up to ``consumer_linger_s``
after its first delivery for more (never past what the prefetch lets it hold) while the others
apply theirs. A failing handler rolls the batch back, and its messages are then applied one
transaction each, so one failure does not undo its neighbours; no per-message savepoints (they
doubled the statements per message: ~25% of the worker's CPU, bench/messaging). Per message:

1. decode the body for its declared type; undecodable → parking queue at once;
2. claim ``(queue, message_id)`` in the inbox; a duplicate is acked and ignored. A batch claims
   all its messages in one multi-row ``INSERT ... RETURNING`` before the first handler runs (one
   round trip per batch instead of one per message). Concurrent duplicates serialize on the inbox
   primary key (batches claim in (correlation id, message id) order, and every claim is taken
   before any handler takes a lock, so two batches never deadlock on it); a second copy in the
   same batch is a duplicate of the first. Handlers run in the same order, so batches lock the
   orders they are about in one global order, whatever their queues;
3. run the handler; its outbox rows commit with its state;
4. after COMMIT, ack. A crash before the ack redelivers, and the inbox absorbs the duplicate;
5. a handler error is a transient failure: a full copy goes to the next delay tier with
   ``attempt`` + 1 and the original is acked; after the last tier, or for ``PermanentError``,
   the message goes to the parking queue with the reason in its headers;
6. the database out of reach (``db.DATABASE_OUTAGE``: down, restarting, out of connections) is
   not the message's fault: its copy goes to the first delay tier with ``attempt`` unchanged, as
   often as it takes, so an outage never parks a message however long it lasts; so does a message
   whose handler says it came before one it follows from (``NotYet``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from opentelemetry import trace

from emeterai_shared.config import ServiceSettings
from emeterai_shared.contracts import Message, MessageDecodeError, decode
from emeterai_shared.db import DATABASE_OUTAGE
from emeterai_shared.failpoints import failpoint
from emeterai_shared.messaging.platform_queues import queue_spec
from emeterai_shared.messaging.publisher import Publisher
from emeterai_shared.messaging.topology import (
    PARKING,
    QueueSpec,
    declare_common,
    declare_consumer_queue,
    delay_exchange,
)
from emeterai_shared.telemetry import HANDLER_LATENCY, MESSAGES_CONSUMED, extract_context, tracer
from emeterai_shared.uow import Last, UnitOfWork, run_lasts

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
ATTEMPT_HEADER = "attempt"
FORWARD_FAILURE_PAUSE_S = 1.0


class PermanentError(Exception):
    """A handler failure that no retry can fix: the message parks at once with this reason."""


class NotYet(Exception):
    """The message arrived before another it follows from (on another queue) was applied: it comes
    back after the first delay tier with its attempt unchanged, as often as it takes, like a message
    met by a database outage; it never parks for this."""


@dataclass(frozen=True)
class Envelope(Generic[M]):
    """A decoded delivery as handlers see it."""

    message_id: str
    type: str
    correlation_id: str | None
    timestamp: datetime | None
    attempt: int
    headers: Mapping[str, Any]
    body: M


Handler = Callable[[UnitOfWork, Envelope[Any]], Awaitable[None]]
"""A handler as the consumer calls it. A declared handler may take more keyword parameters after
these two: each names an attribute of the service's dependencies object, injected once when the
worker starts (``Subscription.bind``), as cosmicpython's bootstrap does."""

Setting = int | Callable[[Any], int] | None
"""A number, or one read from the process's settings (``lambda s: s.job_prefetch``)."""


@dataclass(frozen=True)
class Subscription:
    """One handler for one message type, fed by the queue ``<consumer>.<handler>``.

    Services declare them in a module-level table (``entrypoints/messages.py`` ``SUBSCRIPTIONS``),
    so tooling lists queues and types without a running process."""

    queue: str
    message: type[Message]
    handler: Callable[..., Awaitable[None]]
    prefetch: Setting = None
    """Unacked deliveries this consumer holds (per consumer); None: the process's ``prefetch``.
    Slow handlers (PDF signing) take few, so that several workers share a backlog."""
    concurrency: Setting = None
    """Batch loops for this queue; None: the process's ``consumer_concurrency``."""
    batch_max: Setting = None
    """Messages per transaction; None: the process's ``consumer_batch_max``. A handler that
    awaits slow work should take 1, so that its transaction holds one message."""

    @property
    def spec(self) -> QueueSpec:
        """Its queue bound to its type, with the platform table's queue arguments."""
        return queue_spec(self.queue, (self.message.TYPE,))

    def needs(self) -> list[str]:
        """The dependencies its handler names (its parameters after the unit of work and envelope)."""
        return list(inspect.signature(self.handler).parameters)[2:]

    def bind(self, settings: ServiceSettings, dependencies: object = None) -> Subscription:
        """This subscription with its numbers read from ``settings`` and its handler given what it
        needs from ``dependencies``; a name the dependencies lack fails here, at start."""
        needs = self.needs()
        missing = [name for name in needs if not hasattr(dependencies, name)]
        if missing:
            raise TypeError(f"{self.queue}: handler {getattr(self.handler, '__qualname__', self.handler)!r} "
                            f"needs {missing}, which {type(dependencies).__name__} does not provide")
        handler = (functools.partial(self.handler, **{name: getattr(dependencies, name) for name in needs})
                   if needs else self.handler)

        def number(value: Setting) -> int | None:
            return value(settings) if callable(value) else value

        return replace(self, handler=handler, prefetch=number(self.prefetch),
                       concurrency=number(self.concurrency), batch_max=number(self.batch_max))


def _bound(value: Setting) -> int | None:
    assert not callable(value), "read from the settings by Subscription.bind"
    return value


class _Outcome:
    DONE = "done"
    DUPLICATE = "duplicate"


@dataclass
class _Lane:
    subscription: Subscription
    buffer: asyncio.Queue[AbstractIncomingMessage] = field(default_factory=asyncio.Queue)
    queue: AbstractQueue | None = None
    consumer_tag: str | None = None
    forming: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by the loop that is gathering the lane's next batch: one gathers while others apply."""


def own_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Application headers of a delivery, without the broker's ``x-`` bookkeeping."""
    return {k: v for k, v in (headers or {}).items() if not k.startswith("x-")}


def attempt_of(message: AbstractIncomingMessage) -> int:
    try:
        return max(1, int((message.headers or {}).get(ATTEMPT_HEADER, 1)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1


class Consumer:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        connection: AbstractRobustConnection,
        publisher: Publisher,
        subscriptions: Sequence[Subscription],
        settings: ServiceSettings,
        dependencies: object = None,
    ):
        self._pool = pool
        self._connection = connection
        self._publisher = publisher
        self._settings = settings
        self._lanes = [_Lane(s.bind(settings, dependencies)) for s in subscriptions]
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._stopping = False
        self._channel: Any = None
        self._tracer = tracer()  # get_tracer per message was ~5% of the worker's CPU

    @property
    def busy(self) -> int:
        """Messages being applied right now (for readiness and admission metrics)."""
        return self._busy

    async def start(self) -> None:
        s = self._settings
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=s.prefetch)
        await declare_common(self._channel, s.retry_delays_ms)
        for lane in self._lanes:
            lane.queue = await declare_consumer_queue(self._channel, lane.subscription.spec)
            sub = lane.subscription
            prefetch = _bound(sub.prefetch)
            if prefetch is not None:  # basic.qos applies to the consumers created after it
                await self._channel.set_qos(prefetch_count=prefetch)
            lane.consumer_tag = await lane.queue.consume(lane.buffer.put)
            if prefetch is not None:
                await self._channel.set_qos(prefetch_count=s.prefetch)
            for i in range(max(1, _bound(sub.concurrency) or s.consumer_concurrency)):
                self._tasks.append(
                    asyncio.create_task(self._loop(lane), name=f"{lane.subscription.queue}-{i}")
                )
        log.info("consuming %s", ", ".join(lane.subscription.queue for lane in self._lanes))

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking deliveries, let batches in progress commit and ack, then close.

        Deliveries still buffered are never started; closing the channel returns them to the
        queue. A batch that outlives the grace period is cancelled: its transaction rolls back
        and its messages are redelivered, so nothing is lost or half-applied.
        """
        self._stopping = True
        for lane in self._lanes:
            if lane.queue is not None and lane.consumer_tag is not None:
                with contextlib.suppress(Exception):
                    await lane.queue.cancel(lane.consumer_tag)
        deadline = time.monotonic() + (grace_s if grace_s is not None else self._settings.shutdown_grace_s)
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def _loop(self, lane: _Lane) -> None:
        batch_max = max(1, _bound(lane.subscription.batch_max) or self._settings.consumer_batch_max)
        prefetch = _bound(lane.subscription.prefetch) or self._settings.prefetch
        if prefetch > 0:  # never more than the broker lets it hold unacked: waiting for more would be in vain
            batch_max = min(batch_max, prefetch)
        linger_s = self._settings.consumer_linger_s if batch_max > 1 else 0.0
        while True:
            async with lane.forming:
                first = await lane.buffer.get()
                if self._stopping:
                    return
                batch = await self._gather(lane, first, batch_max, linger_s)
            self._busy += len(batch)
            try:
                await self._process(lane.subscription, batch)
            except Exception:  # never let one bad batch kill the loop
                log.exception("unexpected error processing a batch of %s", lane.subscription.queue)
            finally:
                self._busy -= len(batch)

    async def _gather(self, lane: _Lane, first: AbstractIncomingMessage, batch_max: int,
                      linger_s: float) -> list[AbstractIncomingMessage]:
        """The batch that starts with ``first``: what is buffered, then what arrives within
        ``linger_s`` of it, up to ``batch_max``. A batch's transaction, inbox claim and pool
        checkout cost the same for one message as for 32: at a few dozen messages per second per
        queue, waiting a few milliseconds for the next ones takes most of that off each message
        (``consumer_linger_s``; a backlog fills the batch at once and never waits)."""
        batch = [first]
        deadline = asyncio.get_running_loop().time() + linger_s
        while len(batch) < batch_max:
            if not lane.buffer.empty():
                batch.append(lane.buffer.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._stopping:
                break
            try:
                batch.append(await asyncio.wait_for(lane.buffer.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _process(self, sub: Subscription, raw: list[AbstractIncomingMessage]) -> None:
        items: list[tuple[AbstractIncomingMessage, Envelope[Any]]] = []
        for message in raw:
            try:
                items.append((message, self._decode(sub, message)))
            except MessageDecodeError as exc:
                MESSAGES_CONSUMED.labels(sub.queue, "undecodable").inc()
                await self._park(sub, message, f"undecodable: {exc}")
        if not items:
            return
        items.sort(key=lambda item: _lock_order(item[1]))
        outcomes = await self._apply(sub, [env for _, env in items])
        failpoint("consumer.after_commit")
        for (message, env), outcome in zip(items, outcomes, strict=True):
            await self._settle(sub, message, env, outcome)

    def _decode(self, sub: Subscription, message: AbstractIncomingMessage) -> Envelope[Any]:
        if not message.message_id:
            raise MessageDecodeError("message has no message_id")
        if message.type != sub.message.TYPE:
            raise MessageDecodeError(f"queue {sub.queue} takes {sub.message.TYPE}, got {message.type!r}")
        body = decode(message.type, message.body)
        return Envelope(
            message_id=message.message_id,
            type=message.type,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            attempt=attempt_of(message),
            headers=own_headers(message.headers),
            body=body,
        )

    async def _apply(self, sub: Subscription, envs: list[Envelope[Any]]) -> list[str | BaseException]:
        """Apply envelopes in one transaction; if any fails, roll back and apply them one by one."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                fresh = await _claim(conn, sub.queue, envs)
                lasts: list[Last] = []  # the batch's work deferred to its end (UnitOfWork.last)
                outcomes: list[str | BaseException] = [
                    await self._apply_one(sub, conn, env, _take(fresh, env.message_id), lasts) for env in envs]
                await run_lasts(conn, lasts)
                return outcomes
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(envs) == 1:
                log.warning("transaction for %s failed: %r", sub.queue, exc)
                return [exc]
            results: list[str | BaseException] = []
            for env in envs:
                results.extend(await self._apply(sub, [env]))
            return results

    async def _apply_one(
        self, sub: Subscription, conn: asyncpg.Connection, env: Envelope[Any], claimed: bool,
        lasts: list[Last],
    ) -> str:
        started = time.perf_counter()
        outcome: str
        with self._tracer.start_as_current_span(
            f"{sub.queue} process",
            context=extract_context(env.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.destination.name": sub.queue,
                "messaging.message.id": env.message_id,
                "messaging.message.type": env.type,
                "messaging.attempt": env.attempt,
            },
        ):
            try:
                if not claimed:
                    outcome = _Outcome.DUPLICATE
                else:
                    uow = UnitOfWork(conn, lasts=lasts)
                    await sub.handler(uow, env)
                    await uow.flush()
                    outcome = _Outcome.DONE
            except Exception:  # the span records it; raising rolls the whole transaction back
                HANDLER_LATENCY.labels(sub.queue, "error").observe(time.perf_counter() - started)
                raise
        HANDLER_LATENCY.labels(sub.queue, outcome).observe(time.perf_counter() - started)
        return outcome

    async def _settle(
        self, sub: Subscription, message: AbstractIncomingMessage, env: Envelope[Any],
        outcome: str | BaseException,
    ) -> None:
        if isinstance(outcome, str):
            MESSAGES_CONSUMED.labels(sub.queue, outcome).inc()
            await _ack(message)
        elif isinstance(outcome, PermanentError):
            MESSAGES_CONSUMED.labels(sub.queue, "parked").inc()
            await self._park(sub, message, f"permanent failure: {outcome}")
        elif isinstance(outcome, (*DATABASE_OUTAGE, NotYet)):
            MESSAGES_CONSUMED.labels(sub.queue, "deferred").inc()
            await self._defer(sub, message, outcome)
        elif env.attempt >= self._settings.max_attempts:
            MESSAGES_CONSUMED.labels(sub.queue, "parked").inc()
            await self._park(
                sub, message, f"gave up after {env.attempt} attempts: {_describe(outcome)}"
            )
        else:
            MESSAGES_CONSUMED.labels(sub.queue, "retried").inc()
            await self._retry(sub, message, env, outcome)

    async def _retry(
        self, sub: Subscription, message: AbstractIncomingMessage, env: Envelope[Any],
        error: BaseException,
    ) -> None:
        delay = self._settings.retry_delays_ms[env.attempt - 1]
        headers = {**own_headers(message.headers), ATTEMPT_HEADER: env.attempt + 1,
                   "last_error": _describe(error)[:500]}
        log.info("retrying %s %s in %d ms (attempt %d): %s", sub.queue, env.message_id, delay,
                 env.attempt + 1, _describe(error))
        await self._forward(message, delay_exchange(delay), sub.queue, headers)

    async def _defer(self, sub: Subscription, message: AbstractIncomingMessage, error: BaseException) -> None:
        """The database is out of reach, or the message is early (``NotYet``): come back after the
        first delay tier, attempt unchanged."""
        delay = self._settings.retry_delays_ms[0]
        headers = {**own_headers(message.headers), "last_error": _describe(error)[:500]}
        why = "early" if isinstance(error, NotYet) else "database out of reach"
        log.warning("%s for %s %s; back in %d ms, attempt %s unchanged: %s", why, sub.queue,
                    message.message_id, delay, headers.get(ATTEMPT_HEADER, 1), _describe(error))
        await self._forward(message, delay_exchange(delay), sub.queue, headers)

    async def _park(self, sub: Subscription, message: AbstractIncomingMessage, reason: str) -> None:
        headers = {**own_headers(message.headers), "parked_reason": reason[:1000],
                   "parked_from": sub.queue, "parked_at": datetime.now(UTC).isoformat()}
        log.warning("parking %s from %s: %s", message.message_id, sub.queue, reason)
        await self._forward(message, PARKING, sub.queue, headers)

    async def _forward(
        self, message: AbstractIncomingMessage, exchange: str, routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """Publish a full copy (confirmed), then ack the original.

        If the copy cannot be published the original is returned to its queue after a pause;
        the quorum queue's delivery limit stops this from looping forever.
        """
        try:
            await self._publisher.publish(
                exchange=exchange, routing_key=routing_key, body=message.body,
                message_id=message.message_id or "", message_type=message.type or "",
                correlation_id=message.correlation_id, headers=headers,
                timestamp=message.timestamp,
            )
        except Exception as exc:
            log.error("could not forward %s to %s: %s", message.message_id, exchange, exc)
            await asyncio.sleep(FORWARD_FAILURE_PAUSE_S)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        await _ack(message)


_CLAIM_ONE = """INSERT INTO inbox (consumer, message_id, message_type) VALUES ($1, $2, $3)
                ON CONFLICT DO NOTHING RETURNING message_id"""
_CLAIM_MANY = """INSERT INTO inbox (consumer, message_id, message_type)
                 SELECT $1, m.id, m.type FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS m(id, type, n)
                 ORDER BY m.n
                 ON CONFLICT DO NOTHING RETURNING message_id"""


async def _claim(conn: asyncpg.Connection, queue: str, envs: Sequence[Envelope[Any]]) -> set[str]:
    """Claim the batch's messages in the inbox in one statement, in the batch's (message-id) order;
    returns the ids claimed now (those already there are duplicates)."""
    if len(envs) == 1:
        rows = await conn.fetch(_CLAIM_ONE, queue, envs[0].message_id, envs[0].type)
    else:
        rows = await conn.fetch(_CLAIM_MANY, queue, [e.message_id for e in envs], [e.type for e in envs])
    return {r["message_id"] for r in rows}


def _lock_order(env: Envelope[Any]) -> tuple[str, str]:
    """The order a batch is claimed and applied in: by correlation id (the order a message is
    about), then message id. Every batch of every queue then takes its rows' locks in the same
    order: the inbox claims (a duplicate has its original's ids) and the handlers' row locks (an
    order's row, locked by the messages about it). Two batches that meet on two orders (the
    order's captures and serials, say, on two queues) no longer take them in opposite orders and
    deadlock; by message id alone, they did."""
    return (env.correlation_id or "", env.message_id)


def _take(fresh: set[str], message_id: str) -> bool:
    """Whether this copy is the one that claimed ``message_id`` (the first of its batch to ask)."""
    if message_id in fresh:
        fresh.discard(message_id)
        return True
    return False


async def _ack(message: AbstractIncomingMessage) -> None:
    """Ack after commit. If the channel died meanwhile the broker redelivers; the inbox
    absorbs the duplicate, so a failed ack is logged, not raised."""
    try:
        await message.ack()
    except Exception as exc:
        log.info("ack of %s failed (%s); it will be redelivered and deduplicated",
                 message.message_id, exc)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
