"""Pytest fixtures for tests against the real PostgreSQL and RabbitMQ (registered as a plugin).

Isolation: every test session works in its own RabbitMQ virtual host and its own databases,
named from ``EMETERAI_TEST_NAMESPACE`` (default ``test``): vhost ``emeterai_<ns>``, databases
``emeterai_<ns>_<service>``. A missing server is a test failure with a clear message, never a
skip: the suite must not pass without the real parts.

Broker restarts: a test that stops RabbitMQ takes ``broker_exclusive``; every session holds a
shared lock on the same file, so concurrent sessions on one machine never see a restart they
did not ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import connect_with_retry, create_pool, drop_database, prepare_database
from emeterai_shared.messaging import Consumer, Publisher, connect
from emeterai_shared.messaging.topology import declare_common, declare_consumer_queue, parking_queue
from emeterai_shared.outbox import OutboxRelay
from emeterai_shared.runtime import ServiceDefinition

NAMESPACE = os.environ.get("EMETERAI_TEST_NAMESPACE", "test")
VHOST = f"emeterai_{NAMESPACE}"
PG_BASE = os.environ.get("EMETERAI_TEST_PG_BASE_URL", "postgresql://root@127.0.0.1:5432")
AMQP_BASE = os.environ.get("EMETERAI_TEST_AMQP_BASE_URL", "amqp://guest:guest@127.0.0.1:5672")
AMQP_URL = f"{AMQP_BASE}/{VHOST}"
LOCK_FILE = "/tmp/emeterai-broker.lock"
REPO_ROOT = Path(__file__).resolve().parents[3]


def _port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def rabbitmqctl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not installed: the tests need the real RabbitMQ on this machine")
    return subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, text=True,
                          timeout=timeout)


def wait_for_broker(timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _port_open(5672) and rabbitmqctl("await_startup", check=False, timeout=60).returncode == 0:
            return
        time.sleep(0.5)
    pytest.fail("RabbitMQ did not come back")


@contextlib.contextmanager
def shared_broker_lock() -> Iterator[int]:
    """Held by every test session and benchmark: nobody restarts RabbitMQ under them."""
    fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@pytest.fixture(scope="session")
def broker_lock() -> Iterator[int]:
    with shared_broker_lock() as fd:
        yield fd


@pytest.fixture
def broker_exclusive(broker_lock: int) -> Iterator[None]:
    """Held by tests that stop and start RabbitMQ; always leaves the broker running."""
    fcntl.flock(broker_lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if rabbitmqctl("status", check=False, timeout=60).returncode != 0 or not _port_open(5672):
            rabbitmqctl("start_app", check=False)
        wait_for_broker()
        fcntl.flock(broker_lock, fcntl.LOCK_SH)


@pytest.fixture(scope="session")
def servers(broker_lock: int) -> str:
    """Both servers answer, and this session's vhost exists (fresh); returns its AMQP URL."""
    if not _port_open(5432):
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (make test starts it)")
    if not _port_open(5672):
        pytest.fail("RabbitMQ is not reachable at 127.0.0.1:5672 (make test starts it)")
    return fresh_vhost(VHOST)


def fresh_vhost(vhost: str) -> str:
    """An empty RabbitMQ virtual host (deleted and created again); returns its AMQP URL."""
    rabbitmqctl("delete_vhost", vhost, check=False)
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return f"{AMQP_BASE}/{vhost}"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def settings_for(cls: type[ServiceSettings], **overrides: Any) -> ServiceSettings:
    """Settings of ``cls`` pointed at this session's vhost and database, with fast retry tiers
    and free ports (so concurrent sessions on one machine never collide)."""
    values: dict[str, Any] = {
        "http_port": free_port(),
        "worker_metrics_port": free_port(),
        "relay_metrics_port": free_port(),
        "pg_base_url": PG_BASE,
        "database_name": f"emeterai_{NAMESPACE}_{cls.service_name}",
        "amqp_url": AMQP_URL,
        "retry_delays_ms": [200, 400, 800],
        "relay_poll_interval_s": 0.2,
        "relay_backoff_max_s": 2.0,
        "shutdown_grace_s": 5.0,
        "log_json": False,
    }
    values.update(overrides)
    return cls(**values)


def settings_env(settings: ServiceSettings) -> dict[str, str]:
    """Environment for a subprocess that must see the same settings."""
    prefix = settings.service_name.upper() + "_"
    env = dict(os.environ)
    for key, value in settings.model_dump().items():
        env[prefix + key.upper()] = (
            ",".join(map(str, value)) if isinstance(value, list) else str(value)
        )
    env[prefix + "RETRY_DELAYS_MS"] = "[" + ",".join(map(str, settings.retry_delays_ms)) + "]"
    return env


async def reset_service(defn: ServiceDefinition, settings: ServiceSettings) -> None:
    """A fresh database (migrated) and empty queues for ``defn``."""
    await drop_database(settings.database_url)
    await prepare_database(settings.database_url, defn.migrations, defn.name)
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await conn.channel()
        from emeterai_shared.runtime import Context

        for sub in defn.subscriptions(Context(settings=settings, pool=None)):
            for name in (sub.queue, parking_queue(sub.queue)):
                await channel.queue_delete(name)
        await declare_common(channel, settings.retry_delays_ms)
        for sub in defn.subscriptions(Context(settings=settings, pool=None)):
            await declare_consumer_queue(channel, sub.spec, delivery_limit=settings.delivery_limit,
                                         max_length=settings.max_queue_length)
    finally:
        await conn.close()


@dataclass
class Harness:
    """A service's worker and relay running inside the test's event loop."""

    settings: ServiceSettings
    pool: asyncpg.Pool
    connection: aio_pika.abc.AbstractRobustConnection
    publisher: Publisher
    consumer: Consumer | None = None
    relay: OutboxRelay | None = None
    relay_task: asyncio.Task[None] | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """The worker context's closers (what its handlers opened, e.g. process pools)."""

    async def stop(self) -> None:
        if self.relay is not None and self.relay_task is not None:
            self.relay.stop()
            await asyncio.wait_for(self.relay_task, 30)
        if self.consumer is not None:
            await self.consumer.stop(grace_s=5)
        for closer in reversed(self.closers):
            await closer()
        await self.publisher.close()
        await self.connection.close()
        await self.pool.close()


@contextlib.asynccontextmanager
async def running(defn: ServiceDefinition, settings: ServiceSettings, *, worker: bool = True,
                  relay: bool = True) -> AsyncIterator[Harness]:
    """Run the worker and/or relay of ``defn`` in-process for the duration of the block."""
    from emeterai_shared.runtime import Context

    pool = await create_pool(settings.database_url, max_size=settings.db_pool_max)
    connection = await connect(settings.amqp_url, name=f"{defn.name}-test")
    publisher = Publisher(connection, app_id=defn.name, timeout=settings.publish_timeout_s)
    harness = Harness(settings, pool, connection, publisher)
    try:
        if worker:
            ctx = Context(settings=settings, pool=pool, amqp=connection)
            harness.closers = ctx.closers
            harness.consumer = Consumer(pool=pool, connection=connection, publisher=publisher,
                                        subscriptions=defn.subscriptions(ctx), settings=settings)
            await harness.consumer.start()
        if relay:
            harness.relay = OutboxRelay(pool=pool, publisher=publisher, settings=settings)
            harness.relay_task = asyncio.create_task(harness.relay.run())
        yield harness
    finally:
        await harness.stop()


async def eventually(predicate: Callable[[], Any], *, timeout_s: float = 30, interval_s: float = 0.1,
                     message: str = "condition") -> Any:
    """Poll an (async or sync) predicate until it is truthy; fail with ``message`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message} (last value {last!r})")


async def fetchval(settings: ServiceSettings, query: str, *args: Any) -> Any:
    conn = await connect_with_retry(settings.database_url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def spawn(module: str, command: str, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    """Start ``python -m module command`` as a real process (for SIGKILL/SIGTERM tests)."""
    return subprocess.Popen([sys.executable, "-m", module, command, *extra], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def serve_api(defn: ServiceDefinition, settings: ServiceSettings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """The API of ``defn`` in-process on ``pool`` (a real aiohttp server on a free port);
    yields its base URL."""
    from aiohttp.test_utils import TestServer

    from emeterai_shared.runtime import Context, build_api

    server = TestServer(build_api(defn, Context(settings=settings, pool=pool)))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
