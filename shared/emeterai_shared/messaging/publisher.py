"""A confirming publisher: persistent messages, ``mandatory``, unroutable raises, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pamqp.commands import Basic


class PublishError(RuntimeError):
    """The broker refused this one message (unroutable: returned for a ``mandatory`` publish):
    retrying the same row later may help (a queue gets bound), but the broker itself is up. A
    full queue's nack is ``BrokerBusy`` instead: back-pressure, not the message's fault."""


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached or did not confirm in time."""


class BrokerBusy(BrokerUnavailable):
    """The broker nacked the message because a bounded queue is full: retry later, with backoff;
    the message is fine and must not count toward parking."""


class Publisher:
    def __init__(self, connection: AbstractRobustConnection, *, app_id: str, timeout: float = 10.0):
        self._connection = connection
        self._app_id = app_id
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()

    async def _exchange(self, name: str) -> AbstractExchange:
        async with self._lock:
            # A robust channel is reopened by aio-pika (after a reconnect or a channel error), so
            # it is kept: opening a fresh one per attempt while the broker is down leaked one open
            # channel per attempt once it came back (each is restored with the connection).
            if not self._connection.connected.is_set():
                raise BrokerUnavailable("not connected to the broker (reconnecting)")
            if self._channel is not None and self._channel.is_closed:
                try:
                    await asyncio.wait_for(self._channel.ready(), self._timeout)  # type: ignore[attr-defined]
                except TimeoutError:
                    self._channel = None  # not restored in time: open a fresh one next attempt
                    raise
            if self._channel is None:
                self._channel = await asyncio.wait_for(
                    self._connection.channel(publisher_confirms=True, on_return_raises=True),
                    self._timeout,
                )
                self._exchanges.clear()
            if name not in self._exchanges:
                self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
            return self._exchanges[name]

    async def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        message_type: str,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Publish one persistent message and wait for the broker's confirm.

        A return (unroutable) raises ``PublishError``; a nack (a full queue with
        ``reject-publish``) raises ``BrokerBusy``; no connection or no confirm in time raises
        ``BrokerUnavailable``.
        """
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            type=message_type,
            correlation_id=correlation_id,
            app_id=self._app_id,
            timestamp=timestamp,
            headers=dict(headers or {}),
        )
        try:
            ex = await self._exchange(exchange)
            await ex.publish(
                message, routing_key=routing_key, mandatory=True, timeout=self._timeout
            )
        except aio_pika.exceptions.DeliveryError as exc:
            if isinstance(getattr(exc, "frame", None), Basic.Nack):
                # A bounded queue is full (reject-publish): back-pressure, not a bad message.
                raise BrokerBusy(f"broker nacked {message_type} to {exchange}/{routing_key}: "
                                 "a destination queue is full") from exc
            raise PublishError(f"broker refused {message_type} to {exchange}/{routing_key}: "
                               f"{_describe(exc)}") from exc
        except aio_pika.exceptions.PublishError as exc:
            raise PublishError(f"broker refused {message_type}: {exc}") from exc
        except (TimeoutError, ConnectionError, OSError, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()


def _describe(exc: aio_pika.exceptions.DeliveryError) -> str:
    frame = getattr(exc, "frame", None)
    reply = getattr(frame, "reply_text", None)
    return str(reply or exc)
