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
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import asyncpg
import uvloop
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import QueryCounter, create_pool, prepare_database
from emeterai_shared.forwarded import TrustedProxies
from emeterai_shared.http import SHED_EARLY, OpenApi, Operation, add_probe_routes, create_app
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
class Resources:
    """What the runtime opens for a process, before the service builds its dependencies from it."""

    settings: ServiceSettings
    pool: asyncpg.Pool
    amqp: AbstractRobustConnection | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Awaited, newest first, when the process closes (before the pool): for what the dependencies
    opened, such as an HTTP client session with requests in flight or PDF worker processes."""


DepsT = TypeVar("DepsT")

Endpoint = Callable[[web.Request, DepsT], Awaitable[web.StreamResponse]]
"""A route handler: the request and the process's typed dependencies."""

DEPENDENCIES: web.AppKey[Any] = web.AppKey("dependencies")


class Router(Generic[DepsT]):
    """Declares each route once: its handler and its OpenAPI operation together.

    Handlers receive the process's dependencies object (``DepsT``); registering routes needs none,
    so the OpenAPI document is built without connecting anywhere."""

    def __init__(self, app: web.Application, spec: OpenApi | None):
        self.app = app
        self.spec = spec

    def add(self, op: Operation, handler: Endpoint[DepsT], *,
            shed_early: Callable[[DepsT, web.Request], None] | None = None) -> None:
        """``shed_early``: refusals a front door makes by arithmetic alone (``Admission.shed_early``),
        which the HTTP middleware runs before anything else (``http.SHED_EARLY``); it sees the
        request's headers (a cookie, say), never its body."""
        async def endpoint(request: web.Request) -> web.StreamResponse:
            return await handler(request, request.app[DEPENDENCIES])

        endpoint.__name__ = getattr(handler, "__name__", op.id)
        if shed_early is not None:
            def early(request: web.Request) -> None:
                shed_early(request.app[DEPENDENCIES], request)

            setattr(endpoint, SHED_EARLY, early)
        self.app.router.add_route(op.method, op.path, endpoint)
        if self.spec is not None:
            self.spec.add(op)

    def document(self, op: Operation) -> None:
        """An operation the service does not serve: a webhook it sends (``Operation.webhook``)."""
        if self.spec is not None:
            self.spec.add(op)

    @staticmethod
    def dependencies(app: web.Application) -> Any:
        """The dependencies an app serves with (for start-up and clean-up hooks)."""
        return app[DEPENDENCIES]


@dataclass(frozen=True)
class Periodic(Generic[DepsT]):
    """A job the worker process runs every ``interval_s`` (e.g. expiring unpaid bills).

    Several workers may run it at once: jobs must claim their rows (``SKIP LOCKED``).
    ``interval_s`` may be read from the process's settings (``lambda s: s.sweep_interval_s``)."""

    name: str
    interval_s: float | Callable[[Any], float]
    run: Callable[[DepsT], Awaitable[None]]

    def interval(self, settings: ServiceSettings) -> float:
        return self.interval_s(settings) if callable(self.interval_s) else self.interval_s


@dataclass(frozen=True)
class CommandLine(Generic[DepsT]):
    """The commands a service adds to ``python -m <svc>_service`` (its ``entrypoints/cli.py``)."""

    add: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
    run: Callable[[DepsT, argparse.Namespace], Awaitable[int]] | None = None
    """Runs a command with the service's dependencies (a database pool, no broker)."""
    offline: frozenset[str] = frozenset()
    """Commands run without database or broker, e.g. before setup: ``run_offline``."""
    run_offline: Callable[[ServiceSettings, argparse.Namespace], Awaitable[int]] | None = None


@dataclass(frozen=True)
class ServiceDefinition(Generic[DepsT]):
    """Everything that differs between services; the runtime does the rest.

    ``dependencies`` builds the service's typed dependencies object from what the runtime opened;
    it runs in every process that connects (api, worker, relay, setup, commands), so a process with
    unusable keys or files fails at start. Routes, handlers (by parameter name), periodic jobs and
    commands receive that object."""

    name: str
    title: str
    settings_cls: type[ServiceSettings]
    dependencies: Callable[[Resources], Awaitable[DepsT]]
    routes: Callable[[Router[DepsT]], None] | None = None
    subscriptions: tuple[Subscription, ...] = ()
    """The module-level subscription table (``entrypoints/messages.py``)."""
    commands: CommandLine[DepsT] | None = None
    periodic: tuple[Periodic[DepsT], ...] = ()
    migrations: Path | None = None
    """Default: the ``migrations/`` folder of the settings' package, where the skeleton puts it."""
    platform_queues: tuple[QueueSpec, ...] = PLATFORM_QUEUES
    """Every consumer queue of the platform, declared with the service's own by ``setup`` and by
    the relay before it publishes (see ``messaging.platform_queues``); a service outside the
    platform (the test probe) declares only its own."""

    def __post_init__(self) -> None:
        if self.migrations is None:
            module = sys.modules[self.settings_cls.__module__].__file__
            found = Path(module).parent / "migrations" if module else None
            if found is not None and found.is_dir():
                object.__setattr__(self, "migrations", found)

    def settings(self) -> ServiceSettings:
        return self.settings_cls()


@dataclass
class Process(Generic[DepsT]):
    """An opened process: the runtime's resources and the service's dependencies built from them."""

    resources: Resources
    deps: DepsT

    @property
    def settings(self) -> ServiceSettings:
        return self.resources.settings

    @property
    def pool(self) -> asyncpg.Pool:
        return self.resources.pool

    @property
    def amqp(self) -> AbstractRobustConnection | None:
        return self.resources.amqp


async def assemble(defn: ServiceDefinition[DepsT], resources: Resources) -> Process[DepsT]:
    """``defn``'s dependencies built on ``resources`` (what every process does once it connected)."""
    return Process(resources, await defn.dependencies(resources))


RELAY_POOL_MAX = 3


async def _open(defn: ServiceDefinition[Any], settings: ServiceSettings, kind: str,
                broker: bool = True) -> Process[Any]:
    # A relay works one batch at a time (plus LISTEN and housekeeping): a few connections do, which
    # keeps a whole `make run` (12 processes) inside PostgreSQL's default 100 connections.
    max_size = min(settings.db_pool_max, RELAY_POOL_MAX) if kind == "relay" else settings.db_pool_max
    pool = await create_pool(settings.database_url, min_size=min(settings.db_pool_min, max_size),
                             max_size=max_size, command_timeout=settings.db_command_timeout_s,
                             count_queries=QueryCounter(defn.name, kind) if settings.db_count_queries else None)
    amqp = None
    if broker:
        amqp = await connect(settings.amqp_addresses, name=f"{defn.name}-{kind}",
                             heartbeat=settings.amqp_heartbeat_s,
                             timeout=settings.amqp_connect_timeout_s)
    resources = Resources(settings=settings, pool=pool, amqp=amqp)
    try:
        deps = await defn.dependencies(resources)
    except BaseException:
        await _close_resources(resources)
        raise
    return Process(resources, deps)


async def _close(ctx: Process[Any]) -> None:
    await _close_resources(ctx.resources)


async def _close_resources(ctx: Resources) -> None:
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


def _checks(ctx: Process[Any]) -> dict[str, Callable[[], Awaitable[None]]]:
    async def database() -> None:
        async with ctx.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    async def broker() -> None:
        if ctx.amqp is None or ctx.amqp.is_closed or not ctx.amqp.connected.is_set():
            raise ConnectionError("broker connection is down")

    return {"database": database, "broker": broker}


def build_api(defn: ServiceDefinition[Any], ctx: Process[Any]) -> web.Application:
    spec = OpenApi(defn.title)
    app = create_app(defn.name, max_body_bytes=ctx.settings.http_max_body_bytes,
                     max_in_flight=ctx.settings.http_max_in_flight,
                     trusted_proxies=TrustedProxies.parse(ctx.settings.trusted_proxies),
                     busy_max_retry_after_s=ctx.settings.admission_busy_max_retry_after_s)
    add_probe_routes(app, spec, _checks(ctx))
    app[DEPENDENCIES] = ctx.deps
    if defn.routes is not None:
        defn.routes(Router(app, spec))
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


async def _monitor(defn: ServiceDefinition[Any], ctx: Process[Any], stop: asyncio.Event) -> None:
    """Refresh backlog gauges (queue depth, parked messages) for this service's queues."""
    queues = [s.queue for s in defn.subscriptions]
    types = {s.queue: s.message.TYPE for s in defn.subscriptions}
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


async def run_api(defn: ServiceDefinition[Any]) -> None:
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


async def _side_server(ctx: Process[Any], port: int) -> web.AppRunner:
    app = create_app("side", max_body_bytes=1024)
    add_probe_routes(app, None, _checks(ctx))
    return await _serve(app, ctx.settings.http_host, port)


async def _open_publishing(defn: ServiceDefinition[Any], kind: str) -> tuple[
        Process[Any], AbstractRobustConnection, Publisher, asyncio.Event]:
    """A process that talks to the broker: opened, with its publisher and its stop signal."""
    ctx = await _open(defn, defn.settings(), kind)
    assert ctx.amqp is not None
    publisher = Publisher(ctx.amqp, app_id=defn.name, timeout=ctx.settings.publish_timeout_s)
    return ctx, ctx.amqp, publisher, _stop_event()


async def run_worker(defn: ServiceDefinition[Any]) -> None:
    ctx, amqp, publisher, stop = await _open_publishing(defn, "worker")
    settings = ctx.settings
    consumer = Consumer(pool=ctx.pool, connection=amqp, publisher=publisher,
                        subscriptions=defn.subscriptions, settings=settings, dependencies=ctx.deps)
    await consumer.start()
    jobs = [asyncio.create_task(_every(job, ctx, stop), name=f"periodic {job.name}") for job in defn.periodic]
    side = await _side_server(ctx, settings.worker_metrics_port)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({stopping, *jobs}, return_when=asyncio.FIRST_COMPLETED)
    ended = [j for j in jobs if j.done()] if not stop.is_set() else []
    stop.set()  # a periodic job that ended by itself stops the worker too: never stay up without it
    await stopping
    log.info("%s worker stopping: %d message(s) in progress", defn.name, consumer.busy)
    stopped_at = time.monotonic()
    await consumer.stop()  # the periodic jobs go on meanwhile: one grace period for both
    await finish_jobs(jobs, max(1.0, settings.shutdown_grace_s - (time.monotonic() - stopped_at)))
    await side.cleanup()
    await publisher.close()
    await _close(ctx)
    if ended:
        log.critical("%s worker: %s ended (%s): exiting so that it is restarted", defn.name,
                     ", ".join(j.get_name() for j in ended),
                     ", ".join("cancelled" if j.cancelled() else repr(j.exception()) for j in ended))
        raise SystemExit(1)


async def finish_jobs(jobs: list[asyncio.Task[None]], grace_s: float) -> None:
    """After the stop: let the periodic jobs end the run in progress, for at most ``grace_s``, then
    cancel the rest. A run that keeps finding work (texts arriving as fast as they are sent) would
    otherwise keep a stopped worker up, working, until it is killed."""
    if not jobs:
        return
    _, late = await asyncio.wait(jobs, timeout=grace_s)
    for job in late:
        log.warning("%s still running %.0f s after the stop: cancelled", job.get_name(), grace_s)
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)


async def _every(job: Periodic[Any], ctx: Process[Any], stop: asyncio.Event) -> None:
    interval_s = job.interval(ctx.settings)
    while not stop.is_set():
        try:
            await job.run(ctx.deps)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # this job is being cancelled
            # a cancellation from within (a library's task the job awaited): a failure like another
            log.exception("periodic job %s was cancelled from within; it runs again in %.0fs", job.name, interval_s)
        except Exception:
            log.exception("periodic job %s failed; it runs again in %.0fs", job.name, interval_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def run_relay(defn: ServiceDefinition[Any]) -> None:
    ctx, amqp, publisher, stop = await _open_publishing(defn, "relay")
    settings = ctx.settings
    await declare_topology(defn, settings, amqp)
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


async def declare_topology(defn: ServiceDefinition[Any], settings: ServiceSettings,
                           conn_amqp: AbstractRobustConnection) -> None:
    """Exchanges, delay tiers, and every consumer queue of the platform (not only this service's):
    a message type is copied only to the queues that exist when it is published."""
    channel = await conn_amqp.channel()
    try:
        await declare_common(channel, settings.retry_delays_ms)
        for spec in defn.platform_queues:
            await declare_consumer_queue(channel, spec)
        listed = {spec.name: spec.routing_keys for spec in defn.platform_queues}
        for sub in defn.subscriptions:
            if listed.get(sub.queue) != sub.spec.routing_keys:
                if defn.platform_queues:
                    log.warning("%s: subscription %s (%s) is not in the platform table "
                                "(emeterai_shared.messaging.platform_queues): other services do not "
                                "declare its queue", defn.name, sub.queue, sub.message.TYPE)
                await declare_consumer_queue(channel, sub.spec)
    finally:
        await channel.close()


async def run_setup(defn: ServiceDefinition[Any], broker: bool = True) -> None:
    settings = defn.settings()
    applied = await prepare_database(settings.database_url, defn.migrations, defn.name)
    print(f"{defn.name}: database {settings.database_name} ready "
          f"({len(applied)} migration(s) applied)")
    if broker:
        ctx = await _open(defn, settings, "setup")
        try:
            assert ctx.amqp is not None
            await declare_topology(defn, settings, ctx.amqp)
            print(f"{defn.name}: broker topology declared")
        finally:
            await _close(ctx)


async def run_parking(defn: ServiceDefinition[Any], args: argparse.Namespace) -> int:
    settings = defn.settings()
    ctx = await _open(defn, settings, "parking")
    assert ctx.amqp is not None
    try:
        queues = [args.queue] if args.queue else [s.queue for s in defn.subscriptions]
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


async def run_outbox(defn: ServiceDefinition[Any], args: argparse.Namespace) -> int:
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


def _parser(defn: ServiceDefinition[Any]) -> argparse.ArgumentParser:
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
        defn.commands.add(sub)
    return parser


def main(defn: ServiceDefinition[Any], argv: list[str] | None = None) -> int:
    args = _parser(defn).parse_args(argv)
    settings = defn.settings()
    setup_logging(defn.name, args.command, settings.log_level, settings.log_json)
    setup_tracing(defn.name, args.command)
    command = args.command
    if command == "openapi":
        print(json.dumps(_offline_spec(defn), indent=2))
        return 0
    if command not in _BUILTIN:
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


async def _service_command(defn: ServiceDefinition[Any], args: argparse.Namespace) -> int:
    """A command the service adds (``defn.commands``), run with a database pool only."""
    settings = defn.settings()
    commands = defn.commands
    assert commands is not None
    if args.command in commands.offline:
        assert commands.run_offline is not None
        return await commands.run_offline(settings, args)
    assert commands.run is not None
    ctx = await _open(defn, settings, args.command, broker=False)
    try:
        return await commands.run(ctx.deps, args)
    except asyncpg.UndefinedTableError as exc:
        print(f"{defn.name}: the database {settings.database_name} is not set up ({exc}); "
              f"run `python -m {defn.name}_service setup` (or `make setup`) first", file=sys.stderr)
        return 2
    finally:
        await _close(ctx)


def _offline_spec(defn: ServiceDefinition[Any]) -> dict[str, Any]:
    """The OpenAPI document without connecting anywhere (routes only register handlers)."""
    spec = OpenApi(defn.title)
    app = create_app(defn.name, max_body_bytes=1024)
    add_probe_routes(app, spec, {})
    if defn.routes is not None:
        defn.routes(Router(app, spec))
    return spec.document()
