"""Order migration 008_receipts.sql against a real, throwaway database holding orders paid before it.

* every order that was PAID (whatever became of it since) gets a receipt number, in the order of
  payment within its Asia/Jakarta year (a payment at 23:30 WIB on 31 December counts for that year,
  one at 00:30 WIB on 1 January for the next); orders never paid get none;
* the counters continue after the backfilled numbers, so the next payment takes the next number;
* a receipt is final: updating or deleting it is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from emeterai_shared.db import SHARED_MIGRATIONS, connect_with_retry, drop_database, ensure_database, load_migrations
from emeterai_shared.db import migrate as run_migrations
from emeterai_testkit.fixtures import NAMESPACE, PG_BASE
from order_service.adapters.receipts import ReceiptRepository
from order_service.bootstrap import SERVICE
from order_service.domain.receipt import Payment

DB_URL = f"{PG_BASE}/emeterai_{NAMESPACE}_order_receipts"


@pytest.fixture
async def conn(servers: str) -> AsyncIterator[asyncpg.Connection]:
    await drop_database(DB_URL)
    await ensure_database(DB_URL)
    c = await connect_with_retry(DB_URL)
    try:
        yield c
    finally:
        await c.close()
        await drop_database(DB_URL)


async def migrate(conn: asyncpg.Connection, *, below: int | None = None) -> None:
    assert SERVICE.migrations is not None
    migrations = load_migrations("platform", SHARED_MIGRATIONS) + load_migrations("order", SERVICE.migrations)
    await run_migrations(conn, [m for m in migrations if m.scope == "platform" or below is None or m.version < below])


async def order(conn: asyncpg.Connection, statuses: list[tuple[str, datetime]]) -> uuid.UUID:
    """An order that went through ``statuses`` (status, when), as the code before receipts wrote it."""
    order_id = uuid.uuid4()
    await conn.execute("INSERT INTO orders (id, account_id, quantity, amount, bank, status, failure_reason) "
                       "VALUES ($1, $2, 1, 12500, 'bank-a', $3, 'x')", order_id, uuid.uuid4(), statuses[-1][0])
    old = None
    for status, at in statuses:
        await conn.execute("INSERT INTO order_history (order_id, old_status, new_status, reason, at) "
                           "VALUES ($1, $2, $3, 'r', $4)", order_id, old, status, at)
        old = status
    return order_id


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


async def test_orders_paid_before_receipts_get_their_numbers(conn: asyncpg.Connection) -> None:
    await migrate(conn, below=8)
    placed = utc(2025, 12, 31, 10)
    late_2025 = await order(conn, [("AWAITING_PAYMENT", placed), ("PAID", utc(2025, 12, 31, 16, 30)),
                                   ("FULFILLED", utc(2025, 12, 31, 16, 31))])
    early_2025 = await order(conn, [("AWAITING_PAYMENT", placed), ("PAID", utc(2025, 3, 1, 2)),
                                    ("REFUND_PENDING", utc(2025, 3, 1, 3)), ("REFUNDED", utc(2025, 3, 2))])
    first_2026 = await order(conn, [("AWAITING_PAYMENT", placed), ("PAID", utc(2025, 12, 31, 17, 30))])
    second_2026 = await order(conn, [("AWAITING_PAYMENT", placed), ("PAID", utc(2026, 2, 1))])
    never = [await order(conn, [("AWAITING_PAYMENT", placed)]),
             await order(conn, [("AWAITING_PAYMENT", placed), ("EXPIRED", utc(2026, 1, 1))]),
             await order(conn, [("AWAITING_PAYMENT", placed), ("EXPIRED", utc(2026, 1, 1)),
                                ("REFUND_PENDING", utc(2026, 1, 2))])]

    await migrate(conn)

    rows = await conn.fetch("SELECT order_id, receipt_no, paid_at, method, bank, reference_no FROM receipts")
    numbers = {r["order_id"]: r["receipt_no"] for r in rows}
    assert numbers == {early_2025: "EM-2025-0000001", late_2025: "EM-2025-0000002",
                       first_2026: "EM-2026-0000001", second_2026: "EM-2026-0000002"}
    assert not set(never) & set(numbers)
    assert {r["order_id"]: r["paid_at"] for r in rows}[first_2026] == utc(2025, 12, 31, 17, 30)
    assert {(r["method"], r["bank"], r["reference_no"]) for r in rows} == {("va", "bank-a", None)}
    counters = await conn.fetch("SELECT year, last_no FROM receipt_counters")
    assert {r["year"]: r["last_no"] for r in counters} == {2025: 2, 2026: 2}

    # The next payment of 2026 takes the next number.
    async with conn.transaction():
        fresh = await order(conn, [("AWAITING_PAYMENT", placed), ("PAID", utc(2026, 5, 5))])
        number = await ReceiptRepository(conn).issue(fresh, paid_at=utc(2026, 5, 5),
                                                     payment=Payment("va", "bank-a", "PRQ-1", "REF-1"))
    assert number == "EM-2026-0000003"
    # Issuing again keeps the number given.
    async with conn.transaction():
        assert await ReceiptRepository(conn).issue(fresh, paid_at=utc(2027, 5, 5),
                                                   payment=Payment("va", "bank-a", "PRQ-1", "REF-1")) == number
    assert await conn.fetchval("SELECT last_no FROM receipt_counters WHERE year = 2027") is None

    for statement in ("UPDATE receipts SET receipt_no = 'EM-2026-9999999' WHERE order_id = $1",
                      "DELETE FROM receipts WHERE order_id = $1"):
        with pytest.raises(asyncpg.RaiseError, match="is final"):
            await conn.execute(statement, fresh)
    assert await conn.fetchval("SELECT receipt_no FROM receipts WHERE order_id = $1", fresh) == number
