"""Robust AMQP connections with heartbeats, timeouts and connect retries."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)


def _with_params(url: str, heartbeat: int, name: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", str(heartbeat))
    query.setdefault("name", name)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def connect(
    url: str, *, name: str, heartbeat: int = 30, timeout: float = 10.0, wait_s: float = 60.0
) -> AbstractRobustConnection:
    """Connect with retries; the returned connection reconnects and re-declares by itself."""
    full_url = _with_params(url, heartbeat, name)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((OSError, aio_pika.exceptions.AMQPConnectionError)),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_delay(wait_s),
        reraise=True,
    ):
        with attempt:
            conn = await aio_pika.connect_robust(full_url, timeout=timeout, reconnect_interval=1)
    log.info("connected to broker as %s", name)
    return conn
