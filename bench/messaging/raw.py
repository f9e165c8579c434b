"""Raw ceilings: what PostgreSQL commits and RabbitMQ confirms cost with nothing of ours on top."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aio_pika
from emeterai_shared.db import connect_with_retry
from emeterai_shared.messaging import connect

RAW_QUEUE = "bench.raw_confirms"
# About the size of a probe message body, so the broker moves what the pipeline moves.
RAW_BODY = b'{"seq": 123456, "note": "", "sent_at": null, "padding": "' + b"x" * 64 + b'"}'


@dataclass(frozen=True)
class Rate:
    """``count`` operations in ``seconds``."""

    count: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


async def commit_ceiling(database_url: str, *, total: int, connections: int = 8) -> Rate:
    """Commits/s of one small INSERT per transaction over ``connections`` connections."""
    conns = [await connect_with_retry(database_url) for _ in range(connections)]
    try:
        await conns[0].execute(
            """DROP TABLE IF EXISTS bench_commits;
               CREATE TABLE bench_commits (id bigserial PRIMARY KEY, writer int NOT NULL,
                                           n int NOT NULL, at timestamptz NOT NULL DEFAULT now())"""
        )

        async def writer(index: int, count: int) -> None:
            conn = conns[index]
            for n in range(count):
                async with conn.transaction():
                    await conn.execute("INSERT INTO bench_commits (writer, n) VALUES ($1, $2)", index, n)

        share = total // connections
        started = time.perf_counter()
        await asyncio.gather(*(writer(i, share) for i in range(connections)))
        elapsed = time.perf_counter() - started
        await conns[0].execute("DROP TABLE bench_commits")
        return Rate(share * connections, elapsed)
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def confirm_ceiling(amqp_url: str, *, total: int, in_flight: int = 500) -> Rate:
    """Confirmed, persistent, mandatory publishes/s into a fresh quorum queue."""
    connection = await connect(amqp_url, name="bench-raw-confirms")
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.queue_delete(RAW_QUEUE)
        queue = await channel.declare_queue(RAW_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        exchange = channel.default_exchange
        next_id = iter(range(total))

        async def publisher() -> None:
            for i in next_id:
                message = aio_pika.Message(RAW_BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                           message_id=str(i), type="bench.raw.v1")
                await exchange.publish(message, routing_key=RAW_QUEUE, mandatory=True, timeout=30)

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
        await queue.purge()
        await queue.delete(if_unused=False, if_empty=False)
        return Rate(total, elapsed)
    finally:
        await connection.close()
