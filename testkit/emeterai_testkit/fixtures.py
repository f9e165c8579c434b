"""Pytest fixtures for tests against the real PostgreSQL and RabbitMQ (registered as a plugin).

Isolation: every test session works in its own RabbitMQ virtual host and its own databases,
named from ``EMETERAI_TEST_NAMESPACE`` (default ``test``): vhost ``emeterai_<ns>``, databases
``emeterai_<ns>_<service>``; under pytest-xdist each worker is a session of its own, ``<ns>``
followed by the worker's name (``test_gw0``, ``test_gw1``). A missing server is a test failure
with a clear message, never a skip: the suite must not pass without the real parts.

Broker restarts: a test that stops RabbitMQ takes ``broker_exclusive``; every session holds a
shared lock on the same file, so concurrent sessions on one machine never see a restart they
did not ask for. Such tests run last in the session, and only when the broker has the file
handles to recover every queue it holds (see ``require_restart_headroom``).

Scratch vhosts: a test session or benchmark claims its vhost (an exclusive lock file held while
it runs), creates it described as scratch, and deletes it when it ends; a scratch vhost whose
claim nobody holds (a run that was killed) is deleted by the next run. Every vhost holds a few
dozen quorum queues and each quorum queue keeps about three file handles open in RabbitMQ: left
behind, a handful of them exhausts a default RabbitMQ's 1024 descriptors, and the next broker
restart never finishes booting.

Fail fast: before every test that uses the servers, the broker must answer an AMQP handshake
(checked at most every few seconds); when it stops answering for good the session ends at once
with the reason, instead of every later test waiting out its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import connect_with_retry, create_pool, drop_database, prepare_database
from emeterai_shared.messaging import Consumer, Publisher, connect
from emeterai_shared.messaging.topology import declare_common, declare_consumer_queue, parking_queue
from emeterai_shared.outbox import OutboxRelay
from emeterai_shared.runtime import ServiceDefinition

from emeterai_testkit import forked

NAMESPACE = os.environ.get("EMETERAI_TEST_NAMESPACE", "test") + (
    f"_{os.environ['PYTEST_XDIST_WORKER']}" if os.environ.get("PYTEST_XDIST_WORKER") else "")
VHOST = f"emeterai_{NAMESPACE}"
PG_BASE = os.environ.get("EMETERAI_TEST_PG_BASE_URL", "postgresql://root@127.0.0.1:5432")
AMQP_BASE = os.environ.get("EMETERAI_TEST_AMQP_BASE_URL", "amqp://guest:guest@127.0.0.1:5672")
AMQP_URL = f"{AMQP_BASE}/{VHOST}"
LOCK_FILE = "/tmp/emeterai-broker.lock"
REPO_ROOT = next(p for p in Path(__file__).resolve().parents if (p / "uv.lock").is_file())
"""The checkout the test kit runs from (the workspace root, where ``uv.lock`` lies)."""
SCRATCH_DESCRIPTION = "emeterai scratch vhost (a test session or benchmark): deleted when its run ends"
RESTART_HEADROOM = 0.5
"""A broker restart is refused when RabbitMQ already uses more than this share of its file handles:
recovering its queues on boot needs them all again, and past the limit the boot never finishes."""


def _port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def rabbitmqctl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not installed: the tests need the real RabbitMQ on this machine")
    return subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, text=True,
                          timeout=timeout)


def _amqp_address() -> tuple[str, int]:
    parsed = urlsplit(AMQP_BASE)
    return parsed.hostname or "127.0.0.1", parsed.port or 5672


def broker_answers(timeout_s: float = 5.0, address: tuple[str, int] | None = None) -> bool:
    """RabbitMQ accepts a connection and answers the AMQP 0-9-1 protocol header with a method
    frame (Connection.Start). A wedged broker (out of file handles, still booting) keeps the
    port open but never answers, which a port check alone would miss."""
    try:
        with socket.create_connection(address or _amqp_address(), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(1) == b"\x01"
    except OSError:
        return False


def start_rabbitmq_node() -> None:
    """Start the node the way the machine does (``rabbitmq-server -detached``) when it is down."""
    if rabbitmqctl("status", check=False, timeout=60).returncode != 0:
        subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, timeout=60, check=False)


def wait_for_broker(timeout_s: float = 240) -> None:
    """RabbitMQ's app is running and answers AMQP; starts the app, or the node, if it is down."""
    deadline = time.monotonic() + timeout_s
    start_at: float | None = time.monotonic() + 20  # give a restart in progress its time first
    while time.monotonic() < deadline:
        if broker_answers() and rabbitmqctl("await_startup", check=False, timeout=60).returncode == 0:
            return
        if start_at is not None and time.monotonic() > start_at:
            start_rabbitmq_node()
            rabbitmqctl("start_app", check=False)
            start_at = None
        time.sleep(0.5)
    pytest.fail(f"RabbitMQ did not come back within {timeout_s:.0f}s ({broker_file_handles()})")


def broker_file_handles() -> dict[str, int]:
    """RabbitMQ's file handle use and limit (``rabbitmq-diagnostics status``); empty when it
    does not answer."""
    done = subprocess.run(["rabbitmq-diagnostics", "-q", "status", "--formatter", "json"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return {}
    try:
        fds = json.loads(done.stdout).get("file_descriptors") or {}
    except json.JSONDecodeError:
        return {}
    return {k: int(v) for k, v in fds.items() if isinstance(v, int)}


def require_restart_headroom() -> None:
    """Refuse to restart RabbitMQ when it could not boot again: on start it reopens the files of
    every queue it holds, and past its file handle limit the boot hangs for good."""
    fds = broker_file_handles()
    used, limit = fds.get("total_used", 0), fds.get("total_limit", 0)
    if limit and used > RESTART_HEADROOM * limit:
        vhosts = rabbitmqctl("-q", "list_vhosts", "--no-table-headers", check=False).stdout.split()
        raise RuntimeError(
            f"RabbitMQ uses {used} of its {limit} file handles: a restart would not finish booting. "
            f"Its vhosts: {', '.join(sorted(vhosts))}. Delete the ones left behind "
            "(rabbitmqctl delete_vhost NAME) or raise its open-files limit, then run again.")


def _claim_path(vhost: str) -> str:
    return f"/tmp/emeterai-vhost-{vhost}.lock"


def _try_claim(vhost: str) -> int | None:
    fd = os.open(_claim_path(vhost), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def prune_scratch_vhosts() -> list[str]:
    """Delete the scratch vhosts nobody claims (left by runs that were killed); returns them."""
    done = rabbitmqctl("-q", "list_vhosts", "name", "description", "--no-table-headers", check=False)
    pruned: list[str] = []
    for line in done.stdout.splitlines():
        name, _, description = line.partition("\t")
        if description.strip() != SCRATCH_DESCRIPTION:
            continue
        fd = _try_claim(name)
        if fd is None:
            continue  # a running session or benchmark uses it
        try:
            rabbitmqctl("delete_vhost", name, check=False)
            pruned.append(name)
        finally:
            _release(fd)
    return pruned


@contextlib.contextmanager
def claimed_vhost(vhost: str) -> Iterator[str]:
    """``vhost`` claimed for this run, fresh and empty, deleted at the end; yields its AMQP URL.
    Unclaimed scratch vhosts of earlier runs are deleted first."""
    fd = _try_claim(vhost)
    if fd is None:
        raise RuntimeError(f"vhost {vhost} is in use by another run on this machine "
                           "(give this one its own EMETERAI_TEST_NAMESPACE)")
    try:
        prune_scratch_vhosts()
        yield fresh_vhost(vhost)
    finally:
        try:
            rabbitmqctl("delete_vhost", vhost, check=False)
        finally:
            _release(fd)


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
    """Held by tests that stop and start RabbitMQ; always leaves the broker running. Such tests are
    marked ``restarts_servers`` and never run in a pytest-xdist worker: the workers' other sessions
    would hold the lock for as long as they have tests left (``make test`` runs them alone, after)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("a test that restarts the servers runs alone: `pytest -m restarts_servers`, without -n")
    fcntl.flock(broker_lock, fcntl.LOCK_EX)
    try:
        try:
            require_restart_headroom()
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield
    finally:
        if rabbitmqctl("status", check=False, timeout=60).returncode != 0 or not _port_open(5672):
            rabbitmqctl("start_app", check=False)
        wait_for_broker()
        fcntl.flock(broker_lock, fcntl.LOCK_SH)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran against platforms gets their state in its report: which processes
    were not running and the last warnings and errors of each log."""
    report = yield
    if report.failed and call.when == "call":
        from emeterai_testkit.platform import LIVE

        for platform in LIVE:
            report.sections.append(("platform diagnosis", platform.diagnosis()))
    return report


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("EMETERAI_TEST_FORK", "1") != "0":  # 0: start them as `python -m`, as benchmarks do
        forked.enable()  # platforms' processes are forked from one that has imported the services
    config.addinivalue_line("markers", "restarts_servers: stops and starts the machine's RabbitMQ or PostgreSQL "
                                       "(set on every test that takes broker_exclusive)")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart RabbitMQ are marked ``restarts_servers`` and run last: if a restart goes
    wrong, only they are affected."""
    for item in items:
        if "broker_exclusive" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.restarts_servers)
    items.sort(key=lambda item: item.get_closest_marker("restarts_servers") is not None)


@pytest.fixture(scope="session")
def servers(broker_lock: int) -> Iterator[str]:
    """Both servers answer, and this session's vhost exists (fresh, claimed for the session,
    deleted at its end); yields its AMQP URL."""
    if not _port_open(5432):
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (make test starts it)")
    if not _port_open(5672):
        pytest.fail("RabbitMQ is not reachable at 127.0.0.1:5672 (make test starts it)")
    try:
        with claimed_vhost(VHOST) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


_alive = {"checked_at": -1e9}


@pytest.fixture(autouse=True)
def _servers_still_answer(request: pytest.FixtureRequest) -> None:
    """Before a test that uses the servers: both still answer (broker checked at most every 5 s);
    otherwise end the session now, with the reason, rather than let every test time out."""
    if "servers" not in request.fixturenames or time.monotonic() - _alive["checked_at"] < 5:
        return
    deadline = time.monotonic() + 60
    while not (_port_open(5432) and broker_answers()):
        if time.monotonic() > deadline:
            pytest.exit("PostgreSQL or RabbitMQ stopped answering for 60 s; the rest of the suite cannot run "
                        f"(RabbitMQ file handles: {broker_file_handles() or 'no answer'})", returncode=3)
        time.sleep(1)
    _alive["checked_at"] = time.monotonic()


def fresh_vhost(vhost: str) -> str:
    """An empty RabbitMQ virtual host (deleted and created again, described as scratch);
    returns its AMQP URL. Use ``claimed_vhost`` so that it is deleted when the run ends."""
    rabbitmqctl("delete_vhost", vhost, check=False)
    rabbitmqctl("add_vhost", vhost, "--description", SCRATCH_DESCRIPTION)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return f"{AMQP_BASE}/{vhost}"


_PORT_CLAIMS = Path(tempfile.gettempdir()) / "emeterai-port-claims"
_PORT_CLAIM_HOLD_S = 300.0  # long enough for any server started with the port to have bound it
_issued_ports: set[int] = set()
_held_claims: dict[int, tuple[int, float]] = {}  # port -> (locked file, when claimed)


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def _candidate_ports() -> range:
    """Ports the kernel never hands to an outgoing connection: below its ephemeral range, or above
    it when the range starts too low to leave room."""
    ephemeral = _ephemeral_ports()
    return range(20000, ephemeral.start) if ephemeral.start - 20000 >= 4000 else range(ephemeral.stop, 65536)


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a server this test starts. Picked outside the kernel's ephemeral
    range (a port from ``bind(0)`` is one an outgoing connection, to PostgreSQL say, can take
    before the server binds it), never handed out twice by this process, and claimed against the
    machine's other test sessions by a lock this process holds for a few minutes (released when it
    ends); nobody listens on it when it is handed out."""
    now = time.monotonic()
    for port, (fd, claimed_at) in list(_held_claims.items()):
        if now - claimed_at > _PORT_CLAIM_HOLD_S:
            os.close(fd)  # releases the lock; by now the server holds the port itself
            del _held_claims[port]
    _PORT_CLAIMS.mkdir(parents=True, exist_ok=True)
    candidates = _candidate_ports()
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.choice(candidates)
        if port in _issued_ports:
            continue
        fd = os.open(_PORT_CLAIMS / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            with contextlib.closing(socket.socket()) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            os.close(fd)
            continue
        _issued_ports.add(port)
        _held_claims[port] = (fd, now)
        return port
    raise RuntimeError(f"no free port in {candidates.start}..{candidates.stop - 1} after 1000 tries")


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


async def reset_service(defn: ServiceDefinition[Any], settings: ServiceSettings) -> None:
    """A fresh database (migrated) and empty queues for ``defn``."""
    await drop_database(settings.database_url)
    await prepare_database(settings.database_url, defn.migrations, defn.name)
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await conn.channel()
        for sub in defn.subscriptions:
            for name in (sub.queue, parking_queue(sub.queue)):
                await channel.queue_delete(name)
        await declare_common(channel, settings.retry_delays_ms)
        for sub in defn.subscriptions:
            await declare_consumer_queue(channel, sub.spec)
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
    """What the service's dependencies opened (e.g. process pools), closed at the end."""
    deps: Any = None
    """The service's dependencies object, as its worker's handlers receive it."""

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
async def running(defn: ServiceDefinition[Any], settings: ServiceSettings, *, worker: bool = True,
                  relay: bool = True) -> AsyncIterator[Harness]:
    """Run the worker and/or relay of ``defn`` in-process for the duration of the block."""
    from emeterai_shared.runtime import Resources

    pool = await create_pool(settings.database_url, max_size=settings.db_pool_max)
    connection = await connect(settings.amqp_url, name=f"{defn.name}-test")
    publisher = Publisher(connection, app_id=defn.name, timeout=settings.publish_timeout_s)
    harness = Harness(settings, pool, connection, publisher)
    try:
        resources = Resources(settings=settings, pool=pool, amqp=connection)
        harness.closers = resources.closers
        harness.deps = await defn.dependencies(resources)
        if worker:
            harness.consumer = Consumer(pool=pool, connection=connection, publisher=publisher,
                                        subscriptions=defn.subscriptions, settings=settings,
                                        dependencies=harness.deps)
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
async def serve_api(defn: ServiceDefinition[Any], settings: ServiceSettings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """The API of ``defn`` in-process on ``pool`` (a real aiohttp server on a free port);
    yields its base URL."""
    from aiohttp.test_utils import TestServer
    from emeterai_shared.runtime import Resources, assemble, build_api

    resources = Resources(settings=settings, pool=pool)
    server = TestServer(build_api(defn, await assemble(defn, resources)))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        for closer in reversed(resources.closers):
            await closer()


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A three-node RabbitMQ cluster of this session's own (``emeterai_testkit.cluster``: own node names,
    ports, data and cookie; the machine's broker is not touched), started on first request and stopped
    when the session ends. Only the tests that ask for it pay for it (about 30 s to boot and join)."""
    from emeterai_testkit.cluster import running_cluster

    if shutil.which("erl") is None:
        pytest.fail("Debian's rabbitmq-server (and Erlang) is not installed: the cluster tests need it")
    prefix = "c" + "".join(ch for ch in NAMESPACE.lower() if ch.isalnum())[:8]
    with running_cluster(tmp_path_factory.mktemp("rabbit-cluster"), prefix=prefix, log=lambda _: None) as cluster:
        yield cluster
