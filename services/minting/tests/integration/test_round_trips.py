"""Round trips to PostgreSQL of ``order.paid`` → serials, counted on a real connection.

A credited order's cost is mostly SQL round trips, so this pins how many statements the issuance
sends (the consumer adds its inbox claim, BEGIN and COMMIT, shared by a batch of messages): a change
that adds one fails here and has to say why.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
from emeterai_shared.contracts.events import SerialsIssued
from emeterai_shared.db import create_pool
from emeterai_shared.uow import UnitOfWork
from minting_service.dependencies import MintingDeps
from minting_service.service_layer.issuance import issue_serials

if TYPE_CHECKING:
    from conftest import Minting

ISSUE = 2
"""The issuance row, the waiting check and the serials claimed in one statement (were three), then
minting.serials_issued.v1 in the outbox."""
WAIT = 3
"""The same statement, the issuance WAITING, minting.stock_awaited.v1 in the outbox."""


async def test_issuance_round_trips(minting: Minting) -> None:
    statements: list[str] = []
    pool: asyncpg.Pool = await create_pool(minting.settings.database_url, min_size=1, max_size=1)
    try:
        async with minting.worker() as harness, pool.acquire() as conn:
            deps = harness.deps
            assert isinstance(deps, MintingDeps)
            conn.add_query_logger(lambda record: statements.append(record.query))
            for quantity in (1, 2):  # the first prepares the statements on this connection
                order = minting.order(quantity)
                async with conn.transaction():
                    await asyncio.sleep(0)
                    statements.clear()
                    uow = UnitOfWork(conn)
                    result = await issue_serials(uow, order, deps.keys.signer, datetime.now(UTC),
                                                 minting.settings.stock_wait_s)
                    await uow.flush()
                    await asyncio.sleep(0)
                    sent = list(statements)
                async with conn.transaction():  # the same order again: nothing
                    assert await issue_serials(UnitOfWork(conn), order, deps.keys.signer, datetime.now(UTC)) is None
    finally:
        await pool.close()
    print(f"issuance ({type(result).__name__}): {len(sent)}")
    for q in sent:
        print("   ", " ".join(q.split())[:140])
    if isinstance(result, SerialsIssued):
        assert len(sent) <= ISSUE
        assert sorted(s.sn for s in result.serials) == await minting.serials_of(order.order_id)
    else:  # other orders of the session wait for stock: this one queues behind them
        assert len(sent) <= WAIT
