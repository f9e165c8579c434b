"""PostgreSQL access: database creation on demand, the asyncpg pool and the migration runner."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_MIGRATION_LOCK = 0x6D657465  # advisory lock id: b"mete"

CONNECT_ERRORS = (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)

DATABASE_OUTAGE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08: connection lost, failed, rejected
    asyncpg.exceptions.OperatorInterventionError,  # class 57: admin/crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, out of memory, disk full
    asyncpg.exceptions.PostgresSystemError,  # class 58: I/O error on the server
    asyncpg.InterfaceError, asyncpg.InternalClientError,  # a connection closed under a query or transaction
    ConnectionError, TimeoutError,  # the socket: refused, reset, aborted; a connect that timed out
)
"""Errors that mean PostgreSQL is out of reach (down, restarting, out of connections), not that
the work is wrong: a front door answers them 503 (``http.DATABASE_UNAVAILABLE`` adds any
``OSError``), and a consumer waits them out without spending the message's attempts, so an outage
longer than the retry tiers never parks a message (seen in ``make chaos``: a stamping job parked
after its four fast attempts all met a restarting PostgreSQL)."""


def _admin_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    return urlunsplit(parts._replace(path="/postgres")), name


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist; True when it was created."""
    admin_url, name = _admin_url(url)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"refusing unusual database name {name!r}")
    conn = await connect_with_retry(admin_url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        log.info("created database %s", name)
        return True
    finally:
        await conn.close()


async def drop_database(url: str) -> None:
    """Drop a database (tests and benchmarks only), closing other sessions first."""
    admin_url, name = _admin_url(url)
    conn = await connect_with_retry(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def connect_with_retry(url: str, timeout_s: float = 30.0) -> asyncpg.Connection:
    """Connect, retrying with backoff while PostgreSQL is starting or restarting."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(CONNECT_ERRORS),
        wait=wait_exponential(multiplier=0.2, max=3),
        stop=stop_after_delay(timeout_s),
        reraise=True,
    ):
        with attempt:
            conn: asyncpg.Connection = await asyncpg.connect(url)
            await _init_connection(conn)
    return conn


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A released connection skips asyncpg's default reset (``pg_advisory_unlock_all; CLOSE ALL;
    UNLISTEN *; RESET ALL``, one round trip per release): pooled connections keep no session
    state here (advisory locks are transaction-scoped, LISTEN has its own connection, no
    ``SET``). asyncpg still rolls back a transaction left open before the connection is reused."""


DB_QUERIES = Counter(
    "emeterai_db_queries_total",
    "Statements a process sent to PostgreSQL through its pool (BEGIN and COMMIT included): counted "
    "only when db_count_queries is on", ["service", "process"],
)


class QueryCounter:
    """Counts every statement a pooled connection sends, in ``emeterai_db_queries_total{service,
    process}``: an asyncpg query logger (``Connection.add_query_logger``) registered on each
    connection as the pool opens it.

    asyncpg calls a logger for each ``execute``/``fetch*``/``executemany`` (a transaction's
    ``BEGIN``, ``COMMIT`` and ``ROLLBACK`` are ``execute`` calls too), that is one per round trip
    of a statement; ``executemany`` is one whatever its number of rows (asyncpg pipelines them).
    Not counted: the extra Parse round trip of a statement not yet in the connection's cache, and
    ``copy_*``. asyncpg invokes the logger with ``loop.call_soon``: the counter rises on the next
    turn of the event loop, and each statement costs a few microseconds more, hence opt-in."""

    def __init__(self, service: str, process: str) -> None:
        self.child = DB_QUERIES.labels(service=service, process=process)

    def __call__(self, _record: object) -> None:
        self.child.inc()

    def watch(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(self)


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, command_timeout: float = 30.0,
    count_queries: QueryCounter | None = None,
) -> asyncpg.Pool:
    """An asyncpg pool with JSON codecs, created once PostgreSQL answers; with ``count_queries``
    every statement of its connections is counted (``QueryCounter``)."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if count_queries is not None:
            count_queries.watch(conn)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(CONNECT_ERRORS),
        wait=wait_exponential(multiplier=0.2, max=3),
        stop=stop_after_delay(60),
        reraise=True,
    ):
        with attempt:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                init=init,
                reset=_keep_session,
            )
    assert pool is not None
    return pool


@dataclass(frozen=True)
class Migration:
    scope: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_migrations(scope: str, directory: Path) -> list[Migration]:
    """Read ``NNN_name.sql`` files in version order; gaps are allowed, duplicates are not."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name must look like 001_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version} in {directory}")
        found[version] = Migration(scope, version, path.stem, path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Apply pending migrations, each in its own transaction, under an advisory lock.

    Applied migrations are recorded with a checksum; a changed file that was already applied is
    an error, because the database no longer matches the code that describes it.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   scope text NOT NULL, version int NOT NULL, name text NOT NULL,
                   checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (scope, version))"""
        )
        rows = await conn.fetch("SELECT scope, version, checksum FROM schema_migrations")
        applied = {(r["scope"], r["version"]): r["checksum"] for r in rows}
        done: list[Migration] = []
        for m in migrations:
            known = applied.get((m.scope, m.version))
            if known is not None:
                if known != m.checksum:
                    raise MigrationError(
                        f"migration {m.scope}/{m.name} changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (scope, version, name, checksum)"
                    " VALUES ($1, $2, $3, $4)",
                    m.scope, m.version, m.name, m.checksum,
                )
            log.info("applied migration %s/%s", m.scope, m.name)
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def prepare_database(url: str, service_migrations: Path | None, scope: str) -> list[Migration]:
    """Create the service database when missing and bring its schema up to date."""
    await ensure_database(url)
    migrations = load_migrations("platform", SHARED_MIGRATIONS)
    if service_migrations is not None and service_migrations.is_dir():
        migrations += load_migrations(scope, service_migrations)
    conn = await connect_with_retry(url)
    try:
        return await migrate(conn, migrations)
    finally:
        await conn.close()
