"""Operator tools for parking queues: list, inspect and re-drive parked messages.

Listing reads messages without acknowledging them and returns them to the queue when done, so it
never loses anything. Re-driving republishes a parked message to ``retry`` with the name of the
queue that parked it, as a fresh first attempt, confirms it, and only then acks the parked copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from emeterai_shared.messaging.consumer import ATTEMPT_HEADER, own_headers
from emeterai_shared.messaging.publisher import Publisher
from emeterai_shared.messaging.topology import RETRY, parking_queue

RETURN_WAIT_S = 5.0


@dataclass(frozen=True)
class ParkedMessage:
    queue: str
    message_id: str | None
    type: str | None
    correlation_id: str | None
    reason: str
    attempt: Any
    parked_at: str | None
    timestamp: datetime | None
    body: bytes

    def summary(self) -> dict[str, Any]:
        return {
            "queue": self.queue, "message_id": self.message_id, "type": self.type,
            "correlation_id": self.correlation_id, "reason": self.reason,
            "attempt": self.attempt, "parked_at": self.parked_at,
        }


def _reason(message: AbstractIncomingMessage) -> str:
    headers = message.headers or {}
    if "parked_reason" in headers:
        return str(headers["parked_reason"])
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        # dead-lettered by the broker itself, e.g. x-delivery-limit reached
        first = deaths[0]
        return f"broker dead-lettered ({first.get('reason')!s}) from {first.get('queue')!s}"
    return "unknown"


def _parked(queue: str, message: AbstractIncomingMessage) -> ParkedMessage:
    headers = message.headers or {}
    return ParkedMessage(
        queue=queue, message_id=message.message_id, type=message.type,
        correlation_id=message.correlation_id, reason=_reason(message),
        attempt=headers.get(ATTEMPT_HEADER), parked_at=str(headers.get("parked_at") or "") or None,
        timestamp=message.timestamp, body=message.body,
    )


async def list_parked(
    connection: AbstractRobustConnection, queue: str, limit: int = 100
) -> list[ParkedMessage]:
    """Up to ``limit`` parked messages of ``queue``; all stay parked."""
    channel = await connection.channel()
    found: list[ParkedMessage] = []
    try:
        pq = await channel.declare_queue(parking_queue(queue), passive=True)
        ready = pq.declaration_result.message_count or 0
        for _ in range(limit):
            message = await pq.get(no_ack=False, fail=False)
            if message is None:
                break
            found.append(_parked(queue, message))
    finally:
        with contextlib.suppress(Exception):
            await channel.close()  # unacked gets return to the parking queue
    await _until_returned(connection, queue, ready)
    return found


async def _until_returned(connection: AbstractRobustConnection, queue: str, ready: int) -> None:
    """Wait (at most ``RETURN_WAIT_S``) until the parking queue shows ``ready`` messages again.

    A quorum queue takes back the unacked messages of a closed channel asynchronously; without
    this, a re-drive right after a listing could see an empty queue and silently move nothing.
    """
    deadline = time.monotonic() + RETURN_WAIT_S
    while ready > 0 and time.monotonic() < deadline:
        channel = await connection.channel()  # fresh: a robust channel caches passive declares
        try:
            pq = await channel.declare_queue(parking_queue(queue), passive=True)
            if (pq.declaration_result.message_count or 0) >= ready:
                return
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        await asyncio.sleep(0.05)


async def redrive(
    connection: AbstractRobustConnection, publisher: Publisher, queue: str,
    message_ids: set[str] | None = None, limit: int = 10_000,
) -> list[str]:
    """Send parked messages (all, or those with the given ids) back to ``queue``."""
    channel = await connection.channel()
    moved: list[str] = []
    total = 0
    try:
        pq = await channel.declare_queue(parking_queue(queue), passive=True)
        total = pq.declaration_result.message_count or 0
        for _ in range(min(total, limit)):
            message = await pq.get(no_ack=False, fail=False)
            if message is None:
                break
            if message_ids is not None and message.message_id not in message_ids:
                continue  # left unacked: returns to the parking queue when the channel closes
            headers = {k: v for k, v in own_headers(message.headers).items()
                       if k not in ("parked_reason", "parked_at", "parked_from")}
            headers[ATTEMPT_HEADER] = 1
            headers["redriven_at"] = datetime.now().astimezone().isoformat()
            await publisher.publish(
                exchange=RETRY, routing_key=queue, body=message.body,
                message_id=message.message_id or "", message_type=message.type or "",
                correlation_id=message.correlation_id, headers=headers,
                timestamp=message.timestamp,
            )
            await message.ack()
            moved.append(message.message_id or "")
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    await _until_returned(connection, queue, total - len(moved))  # the ones left parked
    return moved
