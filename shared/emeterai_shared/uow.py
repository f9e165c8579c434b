"""Unit of work: one PostgreSQL transaction holding state changes and outgoing messages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from emeterai_shared.contracts import Message
from emeterai_shared.telemetry import TRACE_HEADERS, inject_context


def outbox_insert(first: int = 1, *, when: str | None = None) -> str:
    """The outbox INSERT of the rows ``UnitOfWork.take`` gives, its six parameters numbered from
    ``$first``; rows written only ``when`` that SQL condition holds. For a larger statement (as a
    data-modifying CTE) that writes a state change and its messages in one round trip."""
    p = [f"${first + i}" for i in range(6)]
    return (f"""INSERT INTO outbox (message_id, message_type, routing_key, correlation_id, body, headers)
             SELECT * FROM unnest({p[0]}::uuid[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], {p[4]}::bytea[],
                                  {p[5]}::jsonb[])""" + (f" WHERE {when}" if when else ""))


_INSERT = outbox_insert()


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

    def take(self) -> tuple[list[Any], ...]:
        """The messages published so far as the six arrays of ``outbox_insert``'s parameters, taken
        out of the unit: the caller writes them in its own statement."""
        rows = self._pending
        self._pending = []
        return ([r[0] for r in rows], [r[1].TYPE for r in rows], [r[1].TYPE for r in rows], [r[2] for r in rows],
                [r[1].to_json() for r in rows], [r[3] for r in rows])

    async def flush(self) -> None:
        if not self._pending:
            return
        await self.conn.execute(_INSERT, *self.take())


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool) -> AsyncIterator[UnitOfWork]:
    """``async with unit_of_work(pool) as uow:`` commits state and outbox rows together."""
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn)
        yield uow
        await uow.flush()
