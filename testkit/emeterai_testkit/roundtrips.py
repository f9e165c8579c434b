"""Counting the statements a piece of work sends to PostgreSQL, on a real connection: the tests
that pin the round trips of the hot paths (a change that adds one fails there and says why)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from emeterai_shared.db import create_pool


@asynccontextmanager
async def counting_pool(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str]]]:
    """A pool of one connection whose statements are logged, in order, in the list it yields."""
    statements: list[str] = []
    pool: asyncpg.Pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: statements.append(record.query))
        yield pool, statements
    finally:
        await pool.close()


async def logged(statements: list[str]) -> list[str]:
    """The statements logged since the last call (the logger's callbacks run soon after each)."""
    await asyncio.sleep(0)
    taken = list(statements)
    statements.clear()
    return taken
