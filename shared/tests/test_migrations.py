"""The migration runner against a real, throwaway PostgreSQL database."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import asyncpg
import pytest
from emeterai_shared.db import (
    _MIGRATION_LOCK,
    MigrationError,
    connect_with_retry,
    drop_database,
    ensure_database,
    load_migrations,
    migrate,
)
from emeterai_testkit.fixtures import NAMESPACE, PG_BASE, eventually

DB_URL = f"{PG_BASE}/emeterai_{NAMESPACE}_migr"


@pytest.fixture
async def conn(servers: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a freshly created database, dropped afterwards."""
    await drop_database(DB_URL)
    assert await ensure_database(DB_URL) is True
    assert await ensure_database(DB_URL) is False  # already there
    c = await connect_with_retry(DB_URL)
    try:
        yield c
    finally:
        await c.close()
        await drop_database(DB_URL)


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


def log_step(n: int) -> str:
    return f"INSERT INTO steps (step) VALUES ({n});"


# Each step depends on the one before it, so applying them out of order would fail outright.
ORDERED = {
    "1000_fourth.sql": "ALTER TABLE gadgets ADD COLUMN colour text;" + log_step(1000),
    "999_third.sql": "CREATE TABLE gadgets (id int REFERENCES widgets (id));" + log_step(999),
    "002_second.sql": "CREATE TABLE widgets (id int PRIMARY KEY);" + log_step(2),
    "001_first.sql": "CREATE TABLE steps (seq serial PRIMARY KEY, step int NOT NULL);" + log_step(1),
    "README.md": "not a migration",
}


async def steps(conn: asyncpg.Connection) -> list[int]:
    return [r["step"] for r in await conn.fetch("SELECT step FROM steps ORDER BY seq")]


async def test_applied_in_version_order_and_recorded(conn: asyncpg.Connection, tmp_path: Path) -> None:
    migrations = load_migrations("demo", write(tmp_path, ORDERED))
    assert [m.version for m in migrations] == [1, 2, 999, 1000]

    applied = await migrate(conn, migrations)

    assert [m.version for m in applied] == [1, 2, 999, 1000]
    assert await steps(conn) == [1, 2, 999, 1000]
    rows = await conn.fetch("SELECT scope, version, name, checksum FROM schema_migrations ORDER BY version")
    assert [(r["scope"], r["version"], r["name"]) for r in rows] == [
        ("demo", 1, "001_first"), ("demo", 2, "002_second"), ("demo", 999, "999_third"),
        ("demo", 1000, "1000_fourth"),
    ]
    for r in rows:
        sql = (tmp_path / f"{r['name']}.sql").read_text()
        assert r["checksum"] == hashlib.sha256(sql.encode()).hexdigest()


async def test_rerun_is_idempotent_and_applies_only_new_files(conn: asyncpg.Connection, tmp_path: Path) -> None:
    d = write(tmp_path, {k: v for k, v in ORDERED.items() if not k.startswith("1000")})
    assert len(await migrate(conn, load_migrations("demo", d))) == 3

    assert await migrate(conn, load_migrations("demo", d)) == []
    assert await steps(conn) == [1, 2, 999]

    write(d, {"1000_fourth.sql": ORDERED["1000_fourth.sql"]})
    assert [m.version for m in await migrate(conn, load_migrations("demo", d))] == [1000]
    assert await steps(conn) == [1, 2, 999, 1000]
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 4


async def test_scopes_are_independent(conn: asyncpg.Connection, tmp_path: Path) -> None:
    platform = write(tmp_path / "platform", {"001_first.sql": ORDERED["001_first.sql"]})
    service = write(tmp_path / "service", {"001_service.sql": "CREATE TABLE svc (id int);" + log_step(10)})
    applied = await migrate(conn, load_migrations("platform", platform) + load_migrations("svc", service))
    assert [(m.scope, m.version) for m in applied] == [("platform", 1), ("svc", 1)]
    assert await steps(conn) == [1, 10]


async def test_changed_applied_file_raises(conn: asyncpg.Connection, tmp_path: Path) -> None:
    d = write(tmp_path, {k: ORDERED[k] for k in ("001_first.sql", "002_second.sql")})
    await migrate(conn, load_migrations("demo", d))
    write(d, {"002_second.sql": ORDERED["002_second.sql"] + "\n-- edited after release\n",
              "003_third.sql": log_step(3)})

    with pytest.raises(MigrationError, match="002_second"):
        await migrate(conn, load_migrations("demo", d))

    assert await steps(conn) == [1, 2]  # the new migration after it was not applied either
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 2


@pytest.mark.parametrize("name", [
    "1_short.sql", "001-dash.sql", "001_Upper.sql", "001_.sql", "first_001.sql", "001_with space.sql",
    "001_x.SQL.sql",
])
def test_bad_file_names_raise(tmp_path: Path, name: str) -> None:
    write(tmp_path, {"001_fine.sql": "SELECT 1;", name: "SELECT 1;"})
    with pytest.raises(MigrationError, match="file name"):
        load_migrations("demo", tmp_path)


@pytest.mark.parametrize("other", ["001_again.sql", "0001_padded.sql"])
def test_duplicate_versions_raise(tmp_path: Path, other: str) -> None:
    write(tmp_path, {"001_first.sql": "SELECT 1;", other: "SELECT 1;"})
    with pytest.raises(MigrationError, match="version 1"):
        load_migrations("demo", tmp_path)


async def test_failing_migration_rolls_back_alone(conn: asyncpg.Connection, tmp_path: Path) -> None:
    d = write(tmp_path, {
        "001_first.sql": ORDERED["001_first.sql"],
        "002_broken.sql": "CREATE TABLE half_done (id int);" + log_step(2) + "SELECT 1 / 0;",
        "003_later.sql": log_step(3),
    })

    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(conn, load_migrations("demo", d))

    assert await steps(conn) == [1]
    assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    assert await conn.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
    # the session's advisory lock was released: another session can take it at once
    other = await connect_with_retry(DB_URL)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK) is True
    finally:
        await other.close()

    write(d, {"002_broken.sql": "CREATE TABLE half_done (id int);" + log_step(2)})
    assert [m.version for m in await migrate(conn, load_migrations("demo", d))] == [2, 3]
    assert await steps(conn) == [1, 2, 3]


async def test_concurrent_migrate_applies_each_migration_once(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Both callers overlap for sure: the test holds the migration lock until both wait for it.
    d = write(tmp_path, {
        "001_first.sql": ORDERED["001_first.sql"],
        "002_second.sql": log_step(2),
        "003_third.sql": log_step(3),
    })
    migrations = load_migrations("demo", d)
    c1, c2 = await connect_with_retry(DB_URL), await connect_with_retry(DB_URL)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        both = asyncio.gather(migrate(c1, migrations), migrate(c2, migrations))
        waiting = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                   " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        await eventually(lambda: _is(conn.fetchval(waiting), 2), message="both callers waiting for the lock")
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        first, second = await both
    finally:
        await c1.close()
        await c2.close()

    assert sorted(m.version for m in first + second) == [1, 2, 3]
    assert {len(first), len(second)} == {0, 3}
    assert await steps(conn) == [1, 2, 3]
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 3


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
