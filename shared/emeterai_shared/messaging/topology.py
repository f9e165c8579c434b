"""RabbitMQ topology, declared idempotently by every process that needs it.

::

    producer ──► events (topic) ──[routing key = message type]──► <consumer>.<handler> (quorum)
                                                                      │  transient failure:
    <consumer>.<handler> ◄──[key = queue]── retry (direct) ◄─ DLX ── delay.<ms>ms (TTL queue)
                                                                      │  exhausted / undecodable /
                                                                      ▼  x-delivery-limit reached
                                          parking (direct) ──[key = queue]──► <queue>.parking

Delay tiers are shared by all consumer queues: a retried copy is published to the tier's fanout
exchange with the *target queue name* as routing key; when its TTL expires the message is
dead-lettered to ``retry`` keeping that routing key, and ``retry`` routes it back to exactly the
queue that failed it (not to every subscriber of its type).

Which consumer queues exist, with which bindings and arguments, is the platform's subscription
table (``platform_queues``), declared whole by every ``setup`` and every relay.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

EVENTS = "events"
RETRY = "retry"
PARKING = "parking"


def delay_exchange(delay_ms: int) -> str:
    return f"delay.{delay_ms}ms"


def parking_queue(queue: str) -> str:
    return f"{queue}.parking"


DELIVERY_LIMIT = 20
"""Default ``x-delivery-limit`` of a consumer queue (deliveries before the broker parks a message)."""
MAX_LENGTH = 1_000_000
"""Default ``x-max-length`` of a consumer queue (past it, publishes are nacked: back-pressure)."""


@dataclass(frozen=True)
class QueueSpec:
    """A consumer queue, the message types routed to it, and its arguments.

    The arguments are part of the queue's identity: RabbitMQ refuses (``PRECONDITION_FAILED``)
    to declare an existing queue with other ones, and any service may be the first to declare
    any queue (``platform_queues``), so they come from the spec, never from one process's
    settings. To change a bound on a live broker, set a policy (``max-length``,
    ``delivery-limit``): it applies without redeclaring, and the lower of the two wins.
    """

    name: str
    routing_keys: tuple[str, ...]
    delivery_limit: int = DELIVERY_LIMIT
    max_length: int = MAX_LENGTH


async def declare_common(channel: AbstractChannel, retry_delays_ms: list[int]) -> None:
    """Exchanges and delay tiers shared by every service."""
    await channel.declare_exchange(EVENTS, aio_pika.ExchangeType.TOPIC, durable=True)
    await channel.declare_exchange(RETRY, aio_pika.ExchangeType.DIRECT, durable=True)
    await channel.declare_exchange(PARKING, aio_pika.ExchangeType.DIRECT, durable=True)
    for delay in sorted(set(retry_delays_ms)):
        name = delay_exchange(delay)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-message-ttl": delay,
                "x-dead-letter-exchange": RETRY,
                "x-queue-mode": "lazy",
            },
        )
        await queue.bind(exchange, routing_key="")


async def declare_consumer_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    """A quorum queue for one handler, its bindings, and its parking queue.

    ``x-delivery-limit`` is the backstop against crash loops (a message that kills its worker
    before it can be acked); past it RabbitMQ dead-letters the message into the parking queue.
    ``x-max-length`` with ``reject-publish`` bounds the queue: the relay then sees a nack and
    keeps the row in the outbox (durable, in PostgreSQL) until the consumers catch up.
    """
    parked = await channel.declare_queue(
        parking_queue(spec.name), durable=True, arguments={"x-queue-type": "quorum"}
    )
    await parked.bind(PARKING, routing_key=spec.name)
    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": spec.delivery_limit,
            "x-dead-letter-exchange": PARKING,
            "x-dead-letter-routing-key": spec.name,
            "x-max-length": spec.max_length,
            "x-overflow": "reject-publish",
        },
    )
    for key in spec.routing_keys:
        await queue.bind(EVENTS, routing_key=key)
    await queue.bind(RETRY, routing_key=spec.name)
    return queue
