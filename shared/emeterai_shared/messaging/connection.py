"""Robust AMQP connections with heartbeats, timeouts, connect retries and failover between brokers.

``connect`` takes one broker address or several (a list, or one string with comma-separated URLs,
e.g. the three nodes of a RabbitMQ cluster). With several, the connection starts at the first that
answers and, when it is lost or an attempt fails, tries the next one (round robin): aio-pika's robust
connection then re-opens its channels, re-declares the topology and resumes the consumers there.
Publishes in flight when a connection drops fail (their confirm never comes) and are retried by the
outbox relay; the consumers' inbox makes a message delivered twice harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential
from yarl import URL

log = logging.getLogger(__name__)


def _with_params(url: str, heartbeat: int, name: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", str(heartbeat))
    query.setdefault("name", name)
    return urlunsplit(parts._replace(query=urlencode(query)))


def broker_addresses(urls: str | Sequence[str]) -> list[str]:
    """The broker URLs of a setting: one URL, comma-separated URLs, or a list of them."""
    items = urls.split(",") if isinstance(urls, str) else [u for url in urls for u in url.split(",")]
    addresses = [u.strip() for u in items if u.strip()]
    if not addresses:
        raise ValueError("no broker address given")
    return addresses


def _redacted(url: URL) -> str:
    return str(url.with_password("******")) if url.password else str(url)


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection over several broker addresses: the address moves on to the next
    one whenever the connection is lost or a connection attempt fails.

    aio-pika reconnects to ``self.url``; this class changes ``self.url`` before the next attempt. The
    hook for a failed attempt is ``RobustConnection``'s private ``__connect_transport`` (pinned aio-pika,
    tested by ``tests/test_cluster.py``)."""

    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        self.addresses = [URL(u) for u in urls]
        self._index = 0
        super().__init__(self.addresses[0], **kwargs)

    @property
    def address(self) -> str:
        """The broker this connection uses (or tries) now, password hidden."""
        return _redacted(self.addresses[self._index])

    def _advance(self, why: str) -> None:
        if len(self.addresses) > 1:
            before = self.address
            self._index = (self._index + 1) % len(self.addresses)
            self.url = self.addresses[self._index]
            log.warning("broker %s %s: trying %s next", before, why, self.address)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not (self._close_called or self.is_closed) and self.connected.is_set():
            self._advance("lost")
        await super()._on_connection_close(closing)

    async def _RobustConnection__connect_transport(self) -> None:
        index = self._index
        try:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._index == index:
                self._advance("did not answer")
            raise


async def connect(
    url: str | Sequence[str], *, name: str, heartbeat: int = 30, timeout: float = 10.0, wait_s: float = 60.0
) -> AbstractRobustConnection:
    """Connect with retries; the returned connection reconnects and re-declares by itself.

    ``url``: one broker URL, or several (a list or a comma-separated string): the first that answers
    is used, and the others in turn when it is lost."""
    addresses = [_with_params(u, heartbeat, name) for u in broker_addresses(url)]
    attempt_no = 0
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((OSError, aio_pika.exceptions.AMQPConnectionError)),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_delay(wait_s),
        reraise=True,
    ):
        with attempt:
            if len(addresses) == 1:
                conn = await aio_pika.connect_robust(addresses[0], timeout=timeout, reconnect_interval=1)
            else:
                start = attempt_no % len(addresses)
                attempt_no += 1
                conn = FailoverConnection(addresses[start:] + addresses[:start], reconnect_interval=1)
                await conn.connect(timeout=timeout)
    log.info("connected to broker as %s", name)
    return conn
