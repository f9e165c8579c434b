"""Standard Webhooks on the wire: signing keys, signatures and the HTTP POST itself.

Headers ``webhook-id`` (the event id, the same on every attempt), ``webhook-timestamp`` (Unix
seconds of this attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256(key,
"{id}.{timestamp}.{body}")>`` over the exact body bytes sent. The format is small enough for the
standard library; the ``standardwebhooks`` package verifies what this module signs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp

from order_service.domain.delivery import Attempt

SECRET_PREFIX = "whsec_"
USER_AGENT = "emeterai-order-webhooks/1"
ERROR_BODY_CHARS = 300


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``webhook_secret``: ``whsec_<base64>`` (Standard Webhooks) is the decoded
    bytes; any other string is used as its UTF-8 bytes. A malformed ``whsec_`` secret is refused."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a whsec_ webhook_secret must be base64 after the prefix") from None
    if not key:
        raise ValueError("the webhook_secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def encode_body(body: dict[str, Any]) -> bytes:
    """The bytes sent and signed: compact JSON, UTF-8."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookSender:
    """POSTs signed bodies over one connection pool, each attempt bounded by ``timeout_s`` in all.

    Redirects are not followed (a 3xx is a failed attempt, as Standard Webhooks advises)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        """Opened at the first send: only the worker's dispatcher sends."""

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                                  headers={"User-Agent": USER_AGENT})
        return self._session

    async def send(self, url: str, key: bytes, msg_id: str, body: dict[str, Any]) -> Attempt:
        raw = encode_body(body)
        ts = int(time.time())
        headers = {"Content-Type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(ts), "webhook-signature": sign(key, msg_id, ts, raw)}
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with self._client().post(url, data=raw, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    answer = (await resp.content.read(ERROR_BODY_CHARS)).decode("utf-8", "replace")
                    error = f"HTTP {status}: {answer}".strip()
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g}s"
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        return Attempt(status, error, (time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
