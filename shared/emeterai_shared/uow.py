"""Unit of work: one PostgreSQL transaction holding state changes and outgoing messages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from emeterai_shared.contracts import Message
from emeterai_shared.telemetry import TRACE_HEADERS, inject_context

_INSERT = """INSERT INTO outbox (message_id, message_type, routing_key, correlation_id, body, headers)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                                  $6::jsonb[])"""


class UnitOfWork:
    """Wraps a connection inside an open transaction; ``publish`` writes to the outbox.

    Messages are buffered and written in one statement when the work commits, so a handler that
    announces several events pays one round trip, and a rolled-back unit writes nothing.
    """

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self._pending: list[tuple[uuid.UUID, Message, str | None, dict[str, Any]]] = []

    def publish(
        self, message: Message, *, correlation_id: str | None = None,
        message_id: uuid.UUID | None = None, trace_headers: Mapping[str, str] | None = None,
    ) -> uuid.UUID:
        """Queue ``message`` for the outbox; its id is fixed now, once, for every redelivery.

        The message carries the current trace context, or ``trace_headers`` (W3C ``traceparent``
        and ``tracestate``, as ``inject_context`` writes them) when given: work triggered outside
        the original trace (a bank's callback, a sweep) then continues the trace it belongs to.
        """
        mid = message_id or uuid.uuid4()
        headers: dict[str, Any] = {}
        if trace_headers is None:
            inject_context(headers)
        else:
            headers.update({k: str(v) for k, v in trace_headers.items() if k in TRACE_HEADERS and v})
        self._pending.append((mid, message, correlation_id, headers))
        return mid

    async def flush(self) -> None:
        if not self._pending:
            return
        rows = self._pending
        self._pending = []
        await self.conn.execute(
            _INSERT,
            [r[0] for r in rows],
            [r[1].TYPE for r in rows],
            [r[1].TYPE for r in rows],
            [r[2] for r in rows],
            [r[1].to_json() for r in rows],
            [r[3] for r in rows],
        )


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool) -> AsyncIterator[UnitOfWork]:
    """``async with unit_of_work(pool) as uow:`` commits state and outbox rows together."""
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn)
        yield uow
        await uow.flush()
