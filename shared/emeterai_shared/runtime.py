"""Process runtime and command line shared by every service.

``python -m <svc>_service <command>``:

=============  ============================================================================
``api``        the aiohttp front door (``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``)
``worker``     consumes the service's queues (metrics server on ``worker_metrics_port``)
``relay``      publishes the outbox (metrics server on ``relay_metrics_port``)
``migrate``    creates the database if missing and applies migrations
``setup``      ``migrate`` plus broker topology (exchanges, delay tiers, queues, parking)
``parking``    ``list [--queue Q]`` / ``redrive --queue Q [--id ID ...] [--all]``
``outbox``     ``status`` / ``redrive [--id N ...]`` for rows the relay parked
``openapi``    prints the OpenAPI document
=============  ============================================================================

SIGTERM or SIGINT stops a process gracefully: the API stops accepting and finishes requests in
flight, the worker stops consuming and lets batches in progress commit and ack, the relay
finishes its batch; then pools and connections close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import create_pool, prepare_database
from emeterai_shared.http import OpenApi, add_probe_routes, create_app
from emeterai_shared.messaging import Consumer, Publisher, Subscription, connect
from emeterai_shared.messaging.parking import list_parked, redrive
from emeterai_shared.messaging.platform_queues import PLATFORM_QUEUES
from emeterai_shared.messaging.topology import (
    QueueSpec,
    declare_common,
    declare_consumer_queue,
    parking_queue,
)
from emeterai_shared.outbox import OutboxRelay, outbox_stats, redrive_parked_rows
from emeterai_shared.stranding import set_parking_depth
from emeterai_shared.telemetry import PARKED_MESSAGES, QUEUE_DEPTH, setup_logging, setup_tracing

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a service's routes and handlers may use; built once per process."""

    settings: ServiceSettings
    pool: asyncpg.Pool
    amqp: AbstractRobustConnection | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Awaited, newest first, when the process closes (before the pool): for what ``extras``
    opened, such as an HTTP client session with requests in flight."""


@dataclass(frozen=True)
class Periodic:
    """A job the worker process runs every ``interval_s`` (e.g. expiring unpaid bills).

    Several workers may run it at once: jobs must claim their rows (``SKIP LOCKED``).
    ``interval_s`` may be read from the process's settings (``lambda s: s.sweep_interval_s``)."""

    name: str
    interval_s: float | Callable[[ServiceSettings], float]
    run: Callable[[Context], Awaitable[None]]

    def interval(self, settings: ServiceSettings) -> float:
        return self.interval_s(settings) if callable(self.interval_s) else self.interval_s


@dataclass(frozen=True)
class ServiceDefinition:
    """Everything that differs between services; the runtime does the rest."""

    name: str
    title: str
    settings_cls: type[ServiceSettings]
    migrations: Path | None = None
    subscriptions: Callable[[Context], list[Subscription]] = lambda _ctx: []
    routes: Callable[[Context, web.Application, OpenApi], None] | None = None
    on_start: Callable[[Context], Awaitable[None]] | None = None
    periodic: tuple[Periodic, ...] = ()
    commands: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = None
    run_command: Callable[[Context, argparse.Namespace], Awaitable[int]] | None = None
    offline_commands: frozenset[str] = frozenset()
    """Service commands run without database or broker (``ctx.pool`` is None), e.g. before setup."""
    platform_queues: tuple[QueueSpec, ...] = PLATFORM_QUEUES
    """Every consumer queue of the platform, declared with the service's own by ``setup`` and by
    the relay before it publishes (see ``messaging.platform_queues``); a service outside the
    platform (the test probe) declares only its own."""

    def settings(self) -> ServiceSettings:
        return self.settings_cls()


RELAY_POOL_MAX = 3


async def _open(defn: ServiceDefinition, settings: ServiceSettings, kind: str,
                broker: bool = True) -> Context:
    # A relay works one batch at a time (plus LISTEN and housekeeping): a few connections do, which
    # keeps a whole `make run` (12 processes) inside PostgreSQL's default 100 connections.
    max_size = min(settings.db_pool_max, RELAY_POOL_MAX) if kind == "relay" else settings.db_pool_max
    pool = await create_pool(settings.database_url, min_size=min(settings.db_pool_min, max_size),
                             max_size=max_size, command_timeout=settings.db_command_timeout_s)
    amqp = None
    if broker:
        amqp = await connect(settings.amqp_url, name=f"{defn.name}-{kind}",
                             heartbeat=settings.amqp_heartbeat_s,
                             timeout=settings.amqp_connect_timeout_s)
    ctx = Context(settings=settings, pool=pool, amqp=amqp)
    if defn.on_start is not None:
        await defn.on_start(ctx)
    return ctx


async def _close(ctx: Context) -> None:
    for closer in reversed(ctx.closers):
        try:
            await closer()
        except Exception:
            log.exception("closing %r failed", closer)
    if ctx.amqp is not None:
        with contextlib.suppress(Exception):
            await ctx.amqp.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ctx.pool.close(), 10)


def _checks(ctx: Context) -> dict[str, Callable[[], Awaitable[None]]]:
    async def database() -> None:
        async with ctx.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    async def broker() -> None:
        if ctx.amqp is None or ctx.amqp.is_closed or not ctx.amqp.connected.is_set():
            raise ConnectionError("broker connection is down")

    return {"database": database, "broker": broker}


def build_api(defn: ServiceDefinition, ctx: Context) -> web.Application:
    spec = OpenApi(defn.title)
    app = create_app(defn.name, max_body_bytes=ctx.settings.http_max_body_bytes,
                     max_in_flight=ctx.settings.http_max_in_flight)
    add_probe_routes(app, spec, _checks(ctx))
    if defn.routes is not None:
        defn.routes(ctx, app, spec)
    return app


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True, backlog=1024).start()
    return runner


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _monitor(defn: ServiceDefinition, ctx: Context, stop: asyncio.Event) -> None:
    """Refresh backlog gauges (queue depth, parked messages) for this service's queues."""
    queues = [s.queue for s in defn.subscriptions(ctx)]
    types = {s.queue: s.message.TYPE for s in defn.subscriptions(ctx)}
    while not stop.is_set():
        if ctx.amqp is not None and not ctx.amqp.is_closed and queues:
            try:
                channel = await ctx.amqp.channel()
                try:
                    for q in queues:
                        for name, gauge in ((q, QUEUE_DEPTH), (parking_queue(q), PARKED_MESSAGES)):
                            declared = await channel.declare_queue(name, passive=True)
                            gauge.labels(q).set(declared.declaration_result.message_count or 0)
                        set_parking_depth(defn.name, parking_queue(q), types[q],  # the parking queue, last above
                                          declared.declaration_result.message_count or 0)
                finally:
                    await channel.close()
            except Exception as exc:
                log.debug("queue depth refresh failed: %r", exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)


async def run_api(defn: ServiceDefinition) -> None:
    settings = defn.settings()
    ctx = await _open(defn, settings, "api")
    stop = _stop_event()
    runner = await _serve(build_api(defn, ctx), settings.http_host, settings.http_port)
    monitor = asyncio.create_task(_monitor(defn, ctx, stop))
    log.info("%s api listening on %s:%d", defn.name, settings.http_host, settings.http_port)
    await stop.wait()
    log.info("%s api stopping", defn.name)
    await runner.cleanup()
    await monitor
    await _close(ctx)


async def _side_server(ctx: Context, port: int) -> web.AppRunner:
    app = create_app("side", max_body_bytes=1024)
    add_probe_routes(app, None, _checks(ctx))
    return await _serve(app, ctx.settings.http_host, port)


async def run_worker(defn: ServiceDefinition) -> None:
    settings = defn.settings()
    ctx = await _open(defn, settings, "worker")
    assert ctx.amqp is not None
    stop = _stop_event()
    publisher = Publisher(ctx.amqp, app_id=defn.name, timeout=settings.publish_timeout_s)
    consumer = Consumer(pool=ctx.pool, connection=ctx.amqp, publisher=publisher,
                        subscriptions=defn.subscriptions(ctx), settings=settings)
    await consumer.start()
    jobs = [asyncio.create_task(_every(job, ctx, stop)) for job in defn.periodic]
    side = await _side_server(ctx, settings.worker_metrics_port)
    await stop.wait()
    log.info("%s worker stopping: %d message(s) in progress", defn.name, consumer.busy)
    await consumer.stop()
    await asyncio.gather(*jobs)
    await side.cleanup()
    await publisher.close()
    await _close(ctx)


async def _every(job: Periodic, ctx: Context, stop: asyncio.Event) -> None:
    interval_s = job.interval(ctx.settings)
    while not stop.is_set():
        try:
            await job.run(ctx)
        except Exception:
            log.exception("periodic job %s failed; it runs again in %.0fs", job.name, interval_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def run_relay(defn: ServiceDefinition) -> None:
    settings = defn.settings()
    ctx = await _open(defn, settings, "relay")
    assert ctx.amqp is not None
    stop = _stop_event()
    publisher = Publisher(ctx.amqp, app_id=defn.name, timeout=settings.publish_timeout_s)
    await declare_topology(defn, ctx, ctx.amqp)
    relay = OutboxRelay(pool=ctx.pool, publisher=publisher, settings=settings)
    task = asyncio.create_task(relay.run())
    side = await _side_server(ctx, settings.relay_metrics_port)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    failed = task.done() and not stop.is_set()  # the relay loop ended on its own: never stay up idle
    stopping.cancel()
    relay.stop()
    with contextlib.suppress(Exception):
        await task
    await side.cleanup()
    await publisher.close()
    await _close(ctx)
    if failed:
        log.critical("%s relay stopped relaying (%r): exiting so that it is restarted", defn.name,
                     task.exception() if not task.cancelled() else "cancelled")
        raise SystemExit(1)


async def declare_topology(defn: ServiceDefinition, ctx: Context,
                           conn_amqp: AbstractRobustConnection) -> None:
    """Exchanges, delay tiers, and every consumer queue of the platform (not only this service's):
    a message type is copied only to the queues that exist when it is published."""
    channel = await conn_amqp.channel()
    try:
        await declare_common(channel, ctx.settings.retry_delays_ms)
        for spec in defn.platform_queues:
            await declare_consumer_queue(channel, spec)
        listed = {spec.name: spec.routing_keys for spec in defn.platform_queues}
        for sub in defn.subscriptions(ctx):
            if listed.get(sub.queue) != sub.spec.routing_keys:
                if defn.platform_queues:
                    log.warning("%s: subscription %s (%s) is not in the platform table "
                                "(emeterai_shared.messaging.platform_queues): other services do not "
                                "declare its queue", defn.name, sub.queue, sub.message.TYPE)
                await declare_consumer_queue(channel, sub.spec)
    finally:
        await channel.close()


async def run_setup(defn: ServiceDefinition, broker: bool = True) -> None:
    settings = defn.settings()
    applied = await prepare_database(settings.database_url, defn.migrations, defn.name)
    print(f"{defn.name}: database {settings.database_name} ready "
          f"({len(applied)} migration(s) applied)")
    if broker:
        ctx = await _open(defn, settings, "setup")
        try:
            assert ctx.amqp is not None
            await declare_topology(defn, ctx, ctx.amqp)
            print(f"{defn.name}: broker topology declared")
        finally:
            await _close(ctx)


async def run_parking(defn: ServiceDefinition, args: argparse.Namespace) -> int:
    settings = defn.settings()
    ctx = await _open(defn, settings, "parking")
    assert ctx.amqp is not None
    try:
        queues = [args.queue] if args.queue else [s.queue for s in defn.subscriptions(ctx)]
        if args.action == "list":
            for q in queues:
                for parked in await list_parked(ctx.amqp, q, limit=args.limit):
                    row = parked.summary()
                    if args.body:
                        row["body"] = parked.body.decode("utf-8", "replace")
                    print(json.dumps(row, default=str))
            return 0
        if not args.queue or not (args.all or args.id):
            print("redrive needs --queue and either --all or --id", file=sys.stderr)
            return 2
        publisher = Publisher(ctx.amqp, app_id=defn.name, timeout=settings.publish_timeout_s)
        moved = await redrive(ctx.amqp, publisher, args.queue, None if args.all else set(args.id))
        await publisher.close()
        print(json.dumps({"queue": args.queue, "redriven": moved}))
        return 0
    finally:
        await _close(ctx)


async def run_outbox(defn: ServiceDefinition, args: argparse.Namespace) -> int:
    settings = defn.settings()
    ctx = await _open(defn, settings, "outbox", broker=False)
    try:
        if args.action == "status":
            row = await outbox_stats(ctx.pool)
            print(json.dumps({"backlog": row["backlog"], "oldest_pending_s": float(row["oldest_s"]),
                              "parked": row["parked"]}))
        else:
            count = await redrive_parked_rows(ctx.pool, args.id or None)
            print(json.dumps({"redriven": count}))
        return 0
    finally:
        await _close(ctx)


def _parser(defn: ServiceDefinition) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {defn.name}_service", description=defn.title)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("api", "worker", "relay", "migrate", "setup", "openapi"):
        sub.add_parser(name)
    parking = sub.add_parser("parking", help="inspect and re-drive parked messages")
    parking.add_argument("action", choices=["list", "redrive"])
    parking.add_argument("--queue")
    parking.add_argument("--id", action="append", default=[])
    parking.add_argument("--all", action="store_true")
    parking.add_argument("--limit", type=int, default=100)
    parking.add_argument("--body", action="store_true", help="print message bodies too")
    outbox = sub.add_parser("outbox", help="outbox backlog and parked rows")
    outbox.add_argument("action", choices=["status", "redrive"])
    outbox.add_argument("--id", type=int, action="append", default=[])
    if defn.commands is not None:
        defn.commands(sub)
    return parser


def main(defn: ServiceDefinition, argv: list[str] | None = None) -> int:
    args = _parser(defn).parse_args(argv)
    settings = defn.settings()
    setup_logging(defn.name, args.command, settings.log_level, settings.log_json)
    setup_tracing(defn.name, args.command)
    command = args.command
    if command == "openapi":
        print(json.dumps(_offline_spec(defn), indent=2))
        return 0
    if command not in _BUILTIN:
        assert defn.run_command is not None
        return uvloop.run(_service_command(defn, args))
    runners: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
        "api": lambda: run_api(defn),
        "worker": lambda: run_worker(defn),
        "relay": lambda: run_relay(defn),
        "migrate": lambda: run_setup(defn, broker=False),
        "setup": lambda: run_setup(defn),
        "parking": lambda: run_parking(defn, args),
        "outbox": lambda: run_outbox(defn, args),
    }
    result: Any = uvloop.run(runners[command]())
    return result if isinstance(result, int) else 0


_BUILTIN = {"api", "worker", "relay", "migrate", "setup", "parking", "outbox", "openapi"}


async def _service_command(defn: ServiceDefinition, args: argparse.Namespace) -> int:
    """A command the service adds (``defn.commands``), run with a database pool only."""
    settings = defn.settings()
    assert defn.run_command is not None
    if args.command in defn.offline_commands:
        return await defn.run_command(Context(settings=settings, pool=None), args)
    ctx = await _open(defn, settings, args.command, broker=False)
    try:
        return await defn.run_command(ctx, args)
    except asyncpg.UndefinedTableError as exc:
        print(f"{defn.name}: the database {settings.database_name} is not set up ({exc}); "
              f"run `python -m {defn.name}_service setup` (or `make setup`) first", file=sys.stderr)
        return 2
    finally:
        await _close(ctx)


def _offline_spec(defn: ServiceDefinition) -> dict[str, Any]:
    """The OpenAPI document without connecting anywhere (routes only register handlers)."""
    spec = OpenApi(defn.title)
    app = create_app(defn.name, max_body_bytes=1024)
    add_probe_routes(app, spec, {})
    if defn.routes is not None:
        defn.routes(Context(settings=defn.settings(), pool=None), app, spec)
    return spec.document()
