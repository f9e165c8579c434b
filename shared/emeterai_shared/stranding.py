"""Money behind parked work: the messages that carry a paid order, and the payments they strand.

A captured payment ends when its order is credited (serials in the order and in the buyer's quota)
or refunded. The messages between the capture and either end carry the money (``MONEY_EVENTS``).
A parked one (an outbox row with ``parked_at``, or a message in a ``<queue>.parking`` queue) moves
nothing by itself: until an operator re-drives it, the payment waiting on it is stranded, however
long anyone waits. So "pending" must never hide it:

* ``stranded`` tells, of the captured payments not yet credited or refunded, those whose only
  pending step is parked work: the platform invariants that the rush and chaos check (the test
  kit's ``invariants``) count them as **lost** at once, naming the message;
* ``emeterai_paid_messages_parked{service, message_type, where}`` (set by the relay's outbox
  metrics and the worker's queue monitor) feeds the ``PaidMessageParked`` alert.

The order a message belongs to is its ``correlation_id`` (every money-carrying message is published
with the order id there) or, failing that, the ``order_id`` of its body.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import ChannelNotFoundEntity

from emeterai_shared.telemetry import PAID_MESSAGES_PARKED

MONEY_EVENTS = frozenset({
    "payment.captured",  # the capture reaches the order (PAID)
    "order.paid",  # the paid order reaches minting (serials)
    "minting.serials_issued",  # the serials reach the order (FULFILLED) and the buyer's quota
    "minting.stock_awaited",  # the paid order waits for stock
    "minting.failed",  # no serials: the order asks for its refund
    "order.refund_requested",  # the refund reaches payment
    "payment.refunded",  # the refund reaches the order (REFUNDED)
    "order.serials_void_requested",  # a refund voids serials already credited
    "stamping.serials_voided",
    "order.partial_refund_requested",  # a buyer's refund of unused stamps reaches payment
    "payment.partial_refund_paid_out",  # its payout reaches the order
})
"""Message types (without their ``.v<major>``) on the way from a captured payment to its credit or refund."""

OUTBOX_PARKED = """SELECT message_type, correlation_id, body, last_error FROM outbox
                   WHERE sent_at IS NULL AND parked_at IS NOT NULL"""
OUTBOX_LIVE = """SELECT DISTINCT correlation_id FROM outbox
                 WHERE sent_at IS NULL AND parked_at IS NULL AND correlation_id IS NOT NULL"""


def event_name(message_type: str) -> str:
    """``payment.captured.v1`` -> ``payment.captured``."""
    head, _, tail = message_type.rpartition(".")
    return head if head and tail.startswith("v") and tail[1:].isdigit() else message_type


def carries_money(message_type: str | None) -> bool:
    return bool(message_type) and event_name(str(message_type)) in MONEY_EVENTS


def order_of(correlation_id: str | None, body: bytes | None) -> str | None:
    """The order a message is about: its correlation id, else its body's ``order_id``."""
    if correlation_id:
        return str(correlation_id)
    try:
        decoded = json.loads(body or b"")
    except ValueError:
        return None
    order = decoded.get("order_id") if isinstance(decoded, dict) else None
    return str(order) if order else None


@dataclass(frozen=True)
class ParkedWork:
    """A parked money-carrying message: ``where`` is ``<service> outbox`` or the parking queue."""

    order_id: str | None
    message_type: str
    where: str
    reason: str

    def describe(self) -> str:
        return f"{self.message_type} parked in {self.where}: {self.reason}"


async def parked_outbox(conn: asyncpg.Connection | asyncpg.Pool, service: str) -> list[ParkedWork]:
    """The money-carrying outbox rows of ``service`` that the relay parked."""
    rows = await conn.fetch(OUTBOX_PARKED)
    return [ParkedWork(order_of(r["correlation_id"], bytes(r["body"])), r["message_type"], f"{service} outbox",
                       str(r["last_error"] or "parked"))
            for r in rows if carries_money(r["message_type"])]


async def live_outbox_orders(conn: asyncpg.Connection | asyncpg.Pool) -> set[str]:
    """Orders with an outbox row still to publish (not parked): work that is still moving."""
    return {str(r["correlation_id"]) for r in await conn.fetch(OUTBOX_LIVE)}


def parked_from_queues(messages: Iterable[Mapping[str, Any]]) -> list[ParkedWork]:
    """Money-carrying messages among parking-queue summaries (``ParkedMessage.summary()`` plus,
    optionally, ``body``)."""
    return [ParkedWork(order_of(m.get("correlation_id"), m.get("body")), str(m["type"]), f"{m['queue']}.parking",
                       str(m.get("reason") or "unknown"))
            for m in messages if carries_money(m.get("type"))]


async def parked_in_queues(connection: AbstractRobustConnection, queues: Iterable[str],
                           limit: int = 1000) -> list[ParkedWork]:
    """The money-carrying messages in the parking queues of ``queues`` (they all stay parked)."""
    from emeterai_shared.messaging.parking import list_parked  # the messaging package imports the outbox

    found: list[ParkedWork] = []
    for queue in queues:
        try:
            messages = await list_parked(connection, queue, limit)
        except ChannelNotFoundEntity:  # never declared here: nothing was parked in it
            continue
        found += parked_from_queues({**m.summary(), "body": m.body} for m in messages)
    return found


def stranded(unresolved: Iterable[str], parked: Iterable[ParkedWork], live: set[str]) -> dict[str, list[ParkedWork]]:
    """Of the orders of ``unresolved`` captured payments (neither credited nor refunded), those whose
    only pending step is parked work: a parked money-carrying message about the order, and no live
    work (``live``: orders with outbox rows still to publish or otherwise still moving)."""
    by_order: dict[str, list[ParkedWork]] = {}
    for work in parked:
        if work.order_id is not None:
            by_order.setdefault(work.order_id, []).append(work)
    return {order: by_order[order] for order in map(str, unresolved) if order in by_order and order not in live}


OUTBOX_PARKED_BY_TYPE = """SELECT message_type, count(*) AS n FROM outbox
                           WHERE sent_at IS NULL AND parked_at IS NOT NULL GROUP BY message_type"""
_outbox_types: dict[str, set[str]] = {}


async def refresh_outbox_gauge(conn: asyncpg.Connection | asyncpg.Pool, service: str) -> None:
    """``emeterai_paid_messages_parked{where="outbox"}`` of ``service``: the money-carrying rows its
    relay parked, per type (0 again for a type whose rows were re-driven)."""
    counts = {r["message_type"]: int(r["n"]) for r in await conn.fetch(OUTBOX_PARKED_BY_TYPE)
              if carries_money(r["message_type"])}
    for gone in _outbox_types.get(service, set()) - set(counts):
        PAID_MESSAGES_PARKED.labels(service, gone, "outbox").set(0)
    for message_type, n in counts.items():
        PAID_MESSAGES_PARKED.labels(service, message_type, "outbox").set(n)
    _outbox_types[service] = set(counts)


def set_parking_depth(service: str, parking: str, message_type: str, depth: int) -> None:
    """``emeterai_paid_messages_parked{where=<parking queue>}``: the queue's depth when its consumer
    handles a money-carrying type (one type per consumer queue)."""
    if carries_money(message_type):
        PAID_MESSAGES_PARKED.labels(service, message_type, parking).set(depth)
