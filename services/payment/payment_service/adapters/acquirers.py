"""QRIS acquirers, loaded from ``PAYMENT_PARTNERS_FILE`` (``{"acquirers": [...]}``, contract shape),
and the client that calls them (SNAP QR MPM).

Every call: a B2B token taken with our RSA key (cached until shortly before it expires), then
``Authorization: Bearer`` and the HMAC-SHA512 ``X-SIGNATURE`` over the full path called (the path of
``base_url`` included). Each call has a timeout; transient failures (timeouts, connection errors,
HTTP 5xx, ``5044700``-style timeout codes) are retried with exponential backoff and jitter
(tenacity). Calls run in the payment worker only, never inside a buyer's HTTP request. Every call
and answer is logged (without secrets or tokens).

Each acquirer's calls go through its circuit breaker (`payment_service.adapters.breaker`): after
``PAYMENT_ACQUIRER_BREAKER_THRESHOLD`` calls in a row failed (after their retries) the calls fail at
once (`AcquirerCircuitOpen`, a kind of `AcquirerUnavailable`, so every job keeps its backoff) until
``PAYMENT_ACQUIRER_BREAKER_COOL_DOWN_S`` have passed; then one call, or the worker's `probe` (a
fresh token request), decides.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from payment_service.adapters.breaker import BreakerState, CircuitBreaker
from payment_service.adapters.snap import ACCESS_TOKEN
from payment_service.adapters.snap.signatures import (
    format_snap_timestamp,
    load_private_key,
    load_public_key,
    sign_access_token,
    sign_transaction,
)
from payment_service.metrics import (
    ACQUIRER_BREAKER_OPENED,
    ACQUIRER_BREAKER_STATE,
    ACQUIRER_CALL_SECONDS,
    ACQUIRER_CALLS,
)

log = logging.getLogger(__name__)

TOKEN_MARGIN_S = 60.0
"""A cached token is renewed this long before it expires."""


@dataclass(frozen=True)
class Acquirer:
    acquirer_id: str
    base_url: str
    client_id: str
    client_secret: str
    private_key: rsa.RSAPrivateKey
    merchant_id: str
    partner_id: str
    channel_id: str
    notify_client_id: str
    notify_client_secret: str
    public_key: rsa.RSAPublicKey

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Acquirer:
        return cls(str(entry["acquirer_id"]), str(entry["base_url"]).rstrip("/"), str(entry["client_id"]),
                   str(entry["client_secret"]), load_private_key(entry["private_key_pem"]),
                   str(entry["merchant_id"]), str(entry["partner_id"]), str(entry["channel_id"]),
                   str(entry["notify_client_id"]), str(entry["notify_client_secret"]),
                   load_public_key(entry["public_key_pem"]))


class AcquirerRegistry:
    """The configured acquirers in file order (QRIS bills go to the first)."""

    def __init__(self, acquirers: list[Acquirer]) -> None:
        self._by_id = {a.acquirer_id: a for a in acquirers}
        self._by_notify = {a.notify_client_id: a for a in acquirers}
        if len(self._by_id) != len(acquirers) or len(self._by_notify) != len(acquirers):
            raise ValueError("acquirers: duplicate acquirer_id or notify_client_id")

    @classmethod
    def load(cls, path: Path) -> AcquirerRegistry:
        if not path.exists():
            return cls([])
        return cls([Acquirer.of(entry) for entry in json.loads(path.read_text()).get("acquirers", [])])

    def all(self) -> list[Acquirer]:
        return list(self._by_id.values())

    def first(self) -> Acquirer | None:
        return next(iter(self._by_id.values()), None)

    def get(self, acquirer_id: str) -> Acquirer | None:
        return self._by_id.get(acquirer_id)

    def by_notify_client(self, notify_client_id: str) -> Acquirer | None:
        return self._by_notify.get(notify_client_id)


class AcquirerUnavailable(Exception):
    """A transient failure: timeout, connection error, HTTP 5xx or a SNAP 5xx code. Retried."""


class AcquirerCircuitOpen(AcquirerUnavailable):
    """The acquirer's breaker is open: the call was not made (no network touched; counted as the
    outcome ``breaker_open`` of ``emeterai_acquirer_calls_total``)."""

    def __init__(self, acquirer_id: str, retry_in_s: float) -> None:
        super().__init__(f"acquirer {acquirer_id}: circuit open, calls fail at once for {retry_in_s:.1f} s more")
        self.retry_in_s = retry_in_s


class AcquirerRefused(Exception):
    """A definite refusal (a 4xx SNAP code other than the ones the caller handles)."""

    def __init__(self, code: str, body: dict[str, Any]) -> None:
        super().__init__(f"acquirer answered {code}: {body.get('responseMessage')}")
        self.code = code
        self.body = body


_SECRET_KEYS = {"accessToken"}


def _masked(body: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k in _SECRET_KEYS else v) for k, v in body.items()}


class AcquirerClient:
    """Calls one acquirer's SNAP QR MPM services."""

    def __init__(self, acquirer: Acquirer, session: aiohttp.ClientSession, *, timeout_s: float = 10.0,
                 attempts: int = 4, backoff_s: float = 0.2, breaker: CircuitBreaker | None = None) -> None:
        self.acquirer = acquirer
        self.breaker = breaker or CircuitBreaker(acquirer.acquirer_id, threshold=5, cool_down_s=30.0,
                                                 failure=(AcquirerUnavailable,), refusal=AcquirerCircuitOpen)
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._token: tuple[str, float] | None = None
        self._token_lock = asyncio.Lock()

    def _url(self, path: str) -> tuple[str, str]:
        url = self.acquirer.base_url + path
        return url, urlsplit(url).path

    async def _post(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        url, _ = self._url(path)
        labels = (self.acquirer.acquirer_id, path)
        started = time.monotonic()
        try:
            async with self.session.post(url, data=raw, headers={**headers, "Content-Type": "application/json"},
                                         timeout=self.timeout) as resp:
                status = resp.status
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("acquirer %s POST %s: %r", self.acquirer.acquirer_id, path, exc)
            ACQUIRER_CALLS.labels(*labels, "unreachable").inc()
            raise AcquirerUnavailable(f"{path}: {exc!r}") from exc
        finally:
            ACQUIRER_CALL_SECONDS.labels(*labels).observe(time.monotonic() - started)
        try:
            body = json.loads(text) if text else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        log.info("acquirer %s POST %s -> %s %s", self.acquirer.acquirer_id, path, status, json.dumps(_masked(body)))
        code = str(body.get("responseCode", ""))
        ACQUIRER_CALLS.labels(*labels, code or f"http{status}").inc()
        if status >= 500 or code.startswith("5"):
            raise AcquirerUnavailable(f"{path}: HTTP {status} {code}")
        return status, body

    async def _retrying(self, path: str, make: Any) -> dict[str, Any]:
        async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts), reraise=True,
                wait=wait_exponential_jitter(multiplier=self.backoff_s, max=5.0, jitter=self.backoff_s),
                retry=retry_if_exception_type(AcquirerUnavailable)):
            with attempt:
                headers, raw = await make()
                _, body = await self._post(path, headers, raw)
                return body
        raise AssertionError("unreachable")

    async def token(self) -> str:
        async with self._token_lock:
            if self._token is not None and time.monotonic() < self._token[1]:
                return self._token[0]
            a = self.acquirer

            async def make() -> tuple[dict[str, str], bytes]:
                ts = format_snap_timestamp()
                return ({"X-CLIENT-KEY": a.client_id, "X-TIMESTAMP": ts,
                         "X-SIGNATURE": sign_access_token(a.private_key, a.client_id, ts)},
                        b'{"grantType":"client_credentials"}')

            body = await self._retrying(ACCESS_TOKEN, make)
            if body.get("responseCode") != "2007300" or not body.get("accessToken"):
                raise AcquirerRefused(str(body.get("responseCode")), body)
            ttl = float(body.get("expiresIn", 900))
            self._token = (str(body["accessToken"]), time.monotonic() + max(ttl - TOKEN_MARGIN_S, ttl / 2))
            return self._token[0]

    async def probe(self) -> None:
        """Whether the acquirer answers: a fresh token request through the breaker (the worker's
        probe of an open breaker whose cool-down is over, when no other call comes)."""
        with self.breaker.call():
            self._token = None
            await self.token()

    async def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A signed transaction call; the answer's body (any responseCode below 5xx).
        `AcquirerCircuitOpen` at once, without a request, while the breaker is open."""
        try:
            with self.breaker.call():
                return await self._call(path, payload)
        except AcquirerCircuitOpen:
            ACQUIRER_CALLS.labels(self.acquirer.acquirer_id, path, "breaker_open").inc()
            raise

    async def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        a = self.acquirer
        raw = json.dumps(payload, separators=(",", ":")).encode()

        async def make() -> tuple[dict[str, str], bytes]:
            token = await self.token()
            ts = format_snap_timestamp()
            _, full_path = self._url(path)
            return ({"Authorization": f"Bearer {token}", "X-TIMESTAMP": ts, "X-PARTNER-ID": a.partner_id,
                     "X-EXTERNAL-ID": str(secrets.randbelow(10**18)), "CHANNEL-ID": a.channel_id,
                     "X-SIGNATURE": sign_transaction(a.client_secret, "POST", full_path, token, raw, ts)}, raw)

        body = await self._retrying(path, make)
        if str(body.get("responseCode", "")).startswith("401"):
            self._token = None  # a token the acquirer no longer knows: the next call takes a new one
        return body


def _breaker_changed(breaker: CircuitBreaker) -> None:
    ACQUIRER_BREAKER_STATE.labels(breaker.name).set(breaker.state.value)
    if breaker.state is BreakerState.OPEN:
        ACQUIRER_BREAKER_OPENED.labels(breaker.name).inc()
        log.warning("acquirer %s: circuit open, its calls fail at once (a probe in %.0f s)", breaker.name,
                    breaker.cool_down_s)
    else:
        log.info("acquirer %s: circuit %s", breaker.name, breaker.state.name.lower().replace("_", "-"))


@dataclass(frozen=True)
class Availability:
    """What the worker tells about an acquirer (``payment.acquirer_state.v1``)."""

    available: bool
    retry_at: datetime | None
    """While unavailable: when the next probe may go (the breaker's cool-down ends)."""


class AcquirerClients:
    """One client per acquirer over one HTTP session, opened on first use (the worker's), each with
    its circuit breaker (``breaker_threshold`` failed calls in a row, ``breaker_cool_down_s``)."""

    def __init__(self, *, timeout_s: float, attempts: int, breaker_threshold: int = 5,
                 breaker_cool_down_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.breaker_threshold = breaker_threshold
        self.breaker_cool_down_s = breaker_cool_down_s
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, AcquirerClient] = {}
        self.reported: dict[str, tuple[bool, float]] = {}
        """What this process last published about each acquirer (`service_layer.qris.watch_acquirers`)."""

    def client(self, acquirer: Acquirer) -> AcquirerClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if acquirer.acquirer_id not in self._clients:
            breaker = CircuitBreaker(acquirer.acquirer_id, threshold=self.breaker_threshold,
                                     cool_down_s=self.breaker_cool_down_s, failure=(AcquirerUnavailable,),
                                     on_change=_breaker_changed, refusal=AcquirerCircuitOpen)
            ACQUIRER_BREAKER_STATE.labels(acquirer.acquirer_id).set(breaker.state.value)
            self._clients[acquirer.acquirer_id] = AcquirerClient(acquirer, self._session, timeout_s=self.timeout_s,
                                                                 attempts=self.attempts, breaker=breaker)
        return self._clients[acquirer.acquirer_id]

    def availability(self, acquirer: Acquirer) -> Availability:
        breaker = self.client(acquirer).breaker
        if breaker.state is BreakerState.CLOSED:
            return Availability(True, None)
        retry_at = datetime.now(UTC) + timedelta(seconds=breaker.retry_in())
        return Availability(False, retry_at.replace(microsecond=0) + timedelta(seconds=1))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
