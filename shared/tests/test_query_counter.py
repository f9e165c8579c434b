"""The opt-in statement counter (``db_count_queries``) against a real PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import DB_QUERIES, QueryCounter, create_pool, drop_database, ensure_database
from emeterai_testkit.fixtures import NAMESPACE, PG_BASE

DB_URL = f"{PG_BASE}/emeterai_{NAMESPACE}_qcount"


@pytest.fixture
async def database(servers: str) -> AsyncIterator[str]:
    await drop_database(DB_URL)
    await ensure_database(DB_URL)
    try:
        yield DB_URL
    finally:
        await drop_database(DB_URL)


def counted(service: str, process: str) -> float:
    return DB_QUERIES.labels(service=service, process=process)._value.get()


async def settled() -> None:
    """asyncpg calls query loggers with ``loop.call_soon``: one turn of the loop runs them."""
    await asyncio.sleep(0)


async def test_every_statement_and_transaction_boundary_is_counted(database: str) -> None:
    pool = await create_pool(database, min_size=1, max_size=2, count_queries=QueryCounter("qcount", "api"))
    try:
        await settled()
        before = counted("qcount", "api")
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (n int PRIMARY KEY)")  # 1 (no arguments: simple query)
            await conn.fetchval("SELECT count(*) FROM t")  # 2
            await conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,), (3,)])  # 3: one pipelined batch
            async with conn.transaction():  # 4: BEGIN
                await conn.execute("INSERT INTO t VALUES ($1)", 4)  # 5
                await conn.fetch("SELECT n FROM t")  # 6
            # 7: COMMIT
        await pool.fetchval("SELECT 1")  # 8: the pool's shortcut acquires a counted connection too
        await settled()
        assert counted("qcount", "api") - before == 8
        with pytest.raises(asyncpg.UniqueViolationError):
            async with pool.acquire() as conn, conn.transaction():  # BEGIN
                await conn.execute("INSERT INTO t VALUES ($1)", 1)  # fails; then ROLLBACK
        await settled()
        assert counted("qcount", "api") - before == 11
    finally:
        await pool.close()


async def test_off_by_default(database: str) -> None:
    assert ServiceSettings().db_count_queries is False
    pool = await create_pool(database, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert not conn._con._query_loggers  # no logger: asyncpg takes its untimed path
    finally:
        await pool.close()


def test_the_setting_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMETERAI_DB_COUNT_QUERIES", "true")
    assert ServiceSettings().db_count_queries is True
