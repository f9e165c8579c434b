"""Round trips to PostgreSQL on the payment service's hot paths, counted on a real connection.

A credited order's cost is mostly SQL round trips (each ~120 us of client CPU plus ~80 us of the
server's), so these tests pin how many statements a path sends, BEGIN and COMMIT included: a
change that adds one fails here and has to say why. Counted with asyncpg's query logger on the
only connection of the api's pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg
from emeterai_shared.db import create_pool
from payment_service.adapters.snap import PAYMENT_PATH

if TYPE_CHECKING:
    from conftest import Payment

VA_PAYMENT_ROUND_TRIPS = 6
"""BEGIN, token, claim X-EXTERNAL-ID, lock bill, payments seen, capture + answer + outbox; COMMIT."""


@asynccontextmanager
async def counting_api(payment: Payment) -> AsyncIterator[tuple[str, list[str]]]:
    """Another api process on a pool of one connection whose statements are logged."""
    statements: list[str] = []
    pool: asyncpg.Pool = await create_pool(payment.settings.database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: statements.append(record.query))
        async with payment.api(pool) as base_url:
            yield base_url, statements
    finally:
        await pool.close()


async def test_va_payment_capture_round_trips(payment: Payment) -> None:
    warm_up, bill = await payment.place_order(), await payment.place_order()
    async with counting_api(payment) as (base_url, statements):
        async with payment.bank(base_url=base_url) as bank:
            await bank.get_token()
            # asyncpg prepares a statement (and introspects its types) once per connection: warm up
            assert (await bank.pay(str(warm_up["virtual_account_no"])[len(bank.partner_service_id):],
                                   12_500))[1]["responseCode"] == "2002500"
            cno = str(bill["virtual_account_no"])[len(bank.partner_service_id):]
            await asyncio.sleep(0)  # the logger's callbacks run soon after each statement
            statements.clear()
            request = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(cno, 12_500),
                                                access_token=bank.access_token)
            status, body = await bank.send(request)
            await asyncio.sleep(0)
            captured = list(statements)
            statements.clear()
            assert (status, body["responseCode"]) == (200, "2002500")
            status, body = await bank.send(request)  # the same request again: answered as before
            await asyncio.sleep(0)
            replayed = list(statements)
    print("va payment:", len(captured), "replay:", len(replayed))
    for q in [*captured, "--", *replayed]:
        print("   ", " ".join(q.split())[:150])
    assert len(captured) <= VA_PAYMENT_ROUND_TRIPS, captured
    assert await payment.pool.fetchval("SELECT count(*) FROM payments WHERE bill_id = $1", bill["bill_id"]) == 1
