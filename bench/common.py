"""What every benchmark shares: the broker lock, a fresh vhost, machine facts, rate records."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from typing import Any

import aio_pika
from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import connect_with_retry
from emeterai_testkit.fixtures import claimed_vhost, fresh_vhost, shared_broker_lock, wait_for_broker

from bench.messaging.raw import Rate

__all__ = ["benchmark_broker", "fresh_vhost", "machine_info", "rate_record"]


@contextlib.contextmanager
def benchmark_broker(*vhosts: str) -> Iterator[None]:
    """Hold the test sessions' shared broker lock (no test restarts RabbitMQ during the run)
    once the broker answers, and claim the benchmark's scratch ``vhosts``: made fresh with
    ``fresh_vhost`` during the run, deleted at its end."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(shared_broker_lock())
        wait_for_broker()
        for vhost in vhosts:
            stack.enter_context(claimed_vhost(vhost))
        yield


async def machine_info(settings: ServiceSettings, load_at_start: float) -> dict[str, Any]:
    """Versions, and the load average: other work on this box skews every figure."""
    conn = await connect_with_retry(settings.database_url)
    try:
        pg_version = await conn.fetchval("SHOW server_version")
        synchronous_commit = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    amqp = await aio_pika.connect(settings.amqp_url)
    try:
        assert amqp.transport is not None
        rabbitmq_version = amqp.transport.connection.server_properties.get("version")
    finally:
        await amqp.close()
    return {
        "nproc": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "postgresql_synchronous_commit": synchronous_commit,
        "rabbitmq": rabbitmq_version.decode() if isinstance(rabbitmq_version, bytes) else rabbitmq_version,
        "loadavg_1m": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)},
    }


def rate_record(rate: Rate) -> dict[str, float]:
    return {"count": rate.count, "seconds": round(rate.seconds, 3), "per_s": round(rate.per_s, 1)}
