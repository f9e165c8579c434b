"""Unit of work: one PostgreSQL transaction holding state changes and outgoing messages."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from emeterai_shared.contracts import Message
from emeterai_shared.telemetry import TRACE_HEADERS, inject_context

_INSERT_PARAMETERS = 6


def outbox_insert(first: int = 1, *, when: str | None = None) -> str:
    """The outbox INSERT of the rows ``UnitOfWork.take`` gives, its six parameters numbered from
    ``$first``; rows written only ``when`` that SQL condition holds. For a larger statement (as a
    data-modifying CTE) that writes a state change and its messages in one round trip."""
    p = [f"${first + i}" for i in range(_INSERT_PARAMETERS)]
    return (f"""INSERT INTO outbox (message_id, message_type, routing_key, correlation_id, body, headers)
             SELECT * FROM unnest({p[0]}::uuid[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], {p[4]}::bytea[],
                                  {p[5]}::jsonb[])""" + (f" WHERE {when}" if when else ""))


_INSERT = outbox_insert()
_PARAMETER = re.compile(r"\$(\d+)")
_WITH = re.compile(r"WITH\s", re.IGNORECASE)


Last = Callable[[asyncpg.Connection], Awaitable[Any]]
"""Work to run at the end of the transaction, given its connection (``UnitOfWork.last``)."""


class UnitOfWork:
    """Wraps a connection inside an open transaction; ``publish`` writes to the outbox.

    Messages are buffered and written in one statement when the work commits, so a handler that
    announces several events pays one round trip, and a rolled-back unit writes nothing.
    Work that only reads, or whose every write (outbox rows included) is one statement, may wrap a
    connection outside any transaction: each statement is atomic by itself, and BEGIN and COMMIT
    would be two round trips more.
    """

    def __init__(self, conn: asyncpg.Connection, *, lasts: list[Last] | None = None):
        self.conn = conn
        self._pending: list[tuple[uuid.UUID, Message, str | None, dict[str, Any]]] = []
        self._lasts = lasts

    async def last(self, work: Last) -> None:
        """Run ``work`` (given the connection) as the transaction's last work: a statement that
        locks a row every transaction of its kind needs (a counter) goes last, so that a
        transaction holding it never waits for another lock after it (two consumer batches, each
        holding the counter or an order the other wants, would deadlock). In a consumer batch (and
        in ``unit_of_work``) it runs after the batch's last message; a unit without that (a caller
        that manages its own transaction) runs it at once."""
        if self._lasts is None:
            await work(self.conn)
        else:
            self._lasts.append(work)

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

    async def execute_with_outbox(self, statement: str, *args: Any) -> str:
        """Run ``statement`` (its parameters ``$1``, ``$2``... are ``args``) with the messages
        published so far written to the outbox by the same statement (a ``WITH`` in front of it):
        one round trip instead of two on a hot path. Publish first, then call this; the unit's
        final ``flush`` writes only what is published after. ``statement`` is a SELECT, INSERT,
        UPDATE or DELETE, possibly with a ``WITH`` of its own (not ``RECURSIVE``), and has no ``$``
        but its parameters."""
        if not self._pending:
            result: str = await self.conn.execute(statement, *args)
            return result
        shifted = _PARAMETER.sub(lambda m: f"${int(m.group(1)) + _INSERT_PARAMETERS}", statement).lstrip()
        own_with = _WITH.match(shifted)
        combined = (f"WITH outbox_rows AS ({_INSERT}), {shifted[own_with.end():]}" if own_with
                    else f"WITH outbox_rows AS ({_INSERT}) {shifted}")
        result = await self.conn.execute(combined, *self.take(), *args)
        return result


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool) -> AsyncIterator[UnitOfWork]:
    """``async with unit_of_work(pool) as uow:`` commits state and outbox rows together."""
    lasts: list[Last] = []
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, lasts=lasts)
        yield uow
        await uow.flush()
        await run_lasts(conn, lasts)


async def run_lasts(conn: asyncpg.Connection, lasts: list[Last]) -> None:
    """The work units deferred with ``UnitOfWork.last``, in order, just before the commit."""
    while lasts:
        await lasts.pop(0)(conn)
