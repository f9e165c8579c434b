"""The notification adapter: texts to phones.

Production posts each text to an SMS gateway over HTTP (``ORDER_SMS_GATEWAY_URL``, bearer
``ORDER_SMS_GATEWAY_TOKEN``): ``POST {"to": phone, "text": text}``, any 2xx is sent. Timeouts,
connection errors and 5xx are retried with exponential backoff (``ORDER_SMS_ATTEMPTS`` tries);
a send that still fails, or a 4xx, raises ``SmsFailed`` (``send_all`` returns it): the text
is kept as failed (visible to operators, counted in ``emeterai_sms_sends_total{outcome="failed"}``).

Development (no gateway) appends one JSON line ``{"phone", "text", "sent_at"}`` per text to
``ORDER_DEV_SMS_FILE`` (``var/dev-sms.jsonl``), whole lines under an exclusive lock, so several
workers never interleave.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import aiohttp
from emeterai_shared.files import locked
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

BACKOFF_MAX_S = 8.0
"""The longest wait between two tries of one text (``HttpSmsGateway``'s default)."""


def masked(phone: str) -> str:
    """A phone number as logs show it: its last four digits hidden."""
    return phone[:-4] + "****"


class SmsFailed(Exception):
    """The text could not be sent, for good."""


class _Retryable(Exception):
    """A timeout, a refused connection or a 5xx: worth another try."""


class SmsSender(Protocol):
    async def send(self, phone: str, text: str) -> None: ...

    async def send_all(self, texts: Sequence[tuple[str, str]]) -> list[SmsFailed | None]:
        """Send ``(phone, text)`` pairs together: for each, None (sent) or why it failed for good."""
        ...

    async def close(self) -> None: ...


class DevSmsSink:
    """Appends texts to a JSON-lines file (development and tests)."""

    def __init__(self, path: Path):
        self.path = path

    def _append(self, line: bytes) -> None:
        with locked(self.path.with_name(f".{self.path.name}.lock")):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    async def send(self, phone: str, text: str) -> None:
        await self.send_all([(phone, text)])

    async def send_all(self, texts: Sequence[tuple[str, str]]) -> list[SmsFailed | None]:
        """Every text appended in one write under the lock (whole lines, in the given order)."""
        sent_at = datetime.now(UTC).isoformat()
        lines = b"".join((json.dumps({"phone": phone, "text": text, "sent_at": sent_at}, ensure_ascii=False)
                          + "\n").encode() for phone, text in texts)
        await asyncio.to_thread(self._append, lines)
        return [None] * len(texts)

    async def close(self) -> None:
        return None


class HttpSmsGateway:
    """An SMS gateway over HTTP, with timeouts and retries with backoff."""

    def __init__(self, url: str, token: str, *, timeout_s: float, attempts: int,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = BACKOFF_MAX_S):
        self.url = url
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = max(1, attempts)
        self.backoff = wait_exponential(multiplier=backoff_initial_s, max=backoff_max_s)
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, phone: str, text: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._session.post(self.url, json={"to": phone, "text": text}, headers=headers) as answer:
                if answer.status >= 500:
                    raise _Retryable(f"gateway answered {answer.status}")
                if answer.status >= 300:
                    raise SmsFailed(f"gateway refused the text: {answer.status} {(await answer.text())[:200]}")
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise _Retryable(f"gateway unreachable: {exc!r}") from exc

    async def send(self, phone: str, text: str) -> None:
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(self.attempts), wait=self.backoff,
                                               retry=retry_if_exception_type(_Retryable), reraise=True):
                with attempt:
                    await self._post(phone, text)
        except _Retryable as exc:
            raise SmsFailed(f"{exc} ({self.attempts} attempt(s))") from exc

    async def send_all(self, texts: Sequence[tuple[str, str]]) -> list[SmsFailed | None]:
        """Each text its own request (with its own retries), all at once."""
        async def one(phone: str, text: str) -> SmsFailed | None:
            try:
                await self.send(phone, text)
            except SmsFailed as exc:
                return exc
            return None
        return list(await asyncio.gather(*(one(phone, text) for phone, text in texts)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def sender(gateway_url: str, gateway_token: str, dev_file: str, *, timeout_s: float, attempts: int) -> SmsSender:
    """The gateway when one is configured, else the development sink."""
    if gateway_url:
        return HttpSmsGateway(gateway_url, gateway_token, timeout_s=timeout_s, attempts=attempts)
    return DevSmsSink(Path(dev_file))
