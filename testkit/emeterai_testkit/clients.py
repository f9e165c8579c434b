"""The one applicant/buyer driver: the platform as its public contract sees it, over HTTP.

- ``Client``: every request of an applicant. A ``429``/``503`` is waited out for its
  ``Retry-After`` and the same request (the same ``Idempotency-Key``) sent again, as a
  well-behaved client does, with the cookies the refusal set (a place in the newcomers' line, as a
  browser sends it back; never another caller's); lost connections (and, with ``retry_server_errors``, other 5xx)
  after a capped backoff. Every answer is counted in ``Stats`` (by class, by route and status).
- ``Bank``: the partner bank's SNAP calls through a ``Client`` (its token kept and renewed).
- ``Buyer``: register or sign in with a phone code, order, follow an order: what cross-service
  tests do.
- ``SmsInbox``: the texts the platform sent to phones (the development sink, ``var/dev-sms.jsonl``),
  read as they arrive: the sign-in code sent to a phone after a given moment.

Used by the cross-service tests, by ``emeterai_testkit.chaos`` and by the rush (``bench.rush``).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from emeterai_testkit.fixtures import eventually

if TYPE_CHECKING:
    from payment_service.adapters.banksim import BankSimulator, SignedRequest

MAX_ERROR_BODIES = 8
MAX_RETRY_AFTER_S = 60.0
SHED = (429, 503)
PAY_OK = "2002500"
WRONG_AMOUNT = "4042513"
REPLAYED = "4042518"
INVALID_TOKEN = "4012501"
PAYMENT_ROUTE = "POST /snap/transfer-va/payment"
TOKEN_ROUTE = "POST /snap/access-token"


class Refused(Exception):
    """An answer the caller did not allow, or none but sheds and failures before the deadline
    (already counted in ``Stats``): the applicant gives up."""


@dataclass
class Answer:
    status: int
    body: Any
    """The JSON body (``None`` when empty), or the text when it is not JSON."""
    headers: dict[str, str]

    @property
    def data(self) -> dict[str, Any]:
        """The body as a JSON object (``{"body": ...}`` around anything else)."""
        if isinstance(self.body, dict):
            return self.body
        return {} if self.body is None else {"body": self.body}

    @property
    def code(self) -> str:
        """The SNAP ``responseCode``, or the platform's ``error.code``; ``""`` without one."""
        if isinstance(self.body, dict):
            if "responseCode" in self.body:
                return str(self.body["responseCode"])
            error = self.body.get("error")
            if isinstance(error, dict):
                return str(error.get("code"))
        return ""


def _reason(body: Any) -> str:
    """A refusal's code and its message up to the first colon (what follows holds its numbers)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "(no error body)"
    return f"{error.get('code')}: {str(error.get('message', '')).split(':', 1)[0][:80]}"


def retry_after_s(headers: Mapping[str, str], default: float = 1.0) -> float:
    """The ``Retry-After`` of an answer in seconds (``default`` without a usable one), bounded."""
    try:
        seconds = float(headers["Retry-After"])
    except (KeyError, ValueError):
        seconds = default
    return min(MAX_RETRY_AFTER_S, max(0.2, seconds))


def _backoff(attempt: int) -> float:
    """Seconds before the ``attempt``-th retry of a failure: 0.5 s doubling, capped at 5 s, jittered."""
    return float(min(5.0, 0.5 * 2.0 ** (attempt - 1)) * random.uniform(0.8, 1.2))


@dataclass
class Stats:
    """What the applicants saw, by route: answers by class (``2xx``, ``shed``, ``expected``,
    ``error``), shed by code, errors with bodies, and every answer by ``"<route> <status>"``."""

    answers: Counter[str] = field(default_factory=Counter)       # "2xx", "shed", "expected", "error"
    shed: Counter[str] = field(default_factory=Counter)          # "429" / "503"
    shed_by_route: Counter[str] = field(default_factory=Counter)
    shed_by_reason: Counter[str] = field(default_factory=Counter)
    """``"<route> <status> <code>: <why>"``: the refusal's code and its message up to the first colon
    (which refusal it was: the process's in-flight cap, its line for a slot, the newcomers' pace, ...)."""
    errors: Counter[str] = field(default_factory=Counter)        # "<route> <status|transport>"
    expected: Counter[str] = field(default_factory=Counter)      # "<route> <SNAP code>"
    error_bodies: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    retry_after_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    """Every answer: ``"<route> <HTTP status>"``, or ``"<route> <exception>"`` for a lost connection."""
    unhinted: Counter[str] = field(default_factory=Counter)
    """``"<route> <status>"`` of the 429/503 answers that came without ``Retry-After``."""
    events: list[tuple[float, str, str, float]] = field(default_factory=list)  # (monotonic, class, route, ms)

    def record(self, route: str, klass: str, status: int | str, started: float, body: Any = None) -> None:
        now = time.monotonic()
        self.answers[klass] += 1
        self.events.append((now, klass, route, 1000 * (now - started)))
        self.latency_ms[route].append(1000 * (now - started))
        if klass == "shed":
            self.shed[str(status)] += 1
            self.shed_by_route[f"{route} {status}"] += 1
        elif klass == "error":
            self.errors[f"{route} {status}"] += 1
            if len(self.error_bodies) < MAX_ERROR_BODIES:
                text = body if isinstance(body, str) else repr(body)
                self.error_bodies.append({"route": route, "status": status, "body": text[:500]})

    @property
    def missing_retry_after(self) -> Counter[str]:
        """429/503 answers without ``Retry-After``, by route."""
        out: Counter[str] = Counter()
        for key, n in self.unhinted.items():
            out[key.rsplit(" ", 1)[0]] += n
        return out

    def count(self, klass: str, start: float, end: float, route_prefix: str = "") -> int:
        return sum(1 for t, k, r, _ in self.events if k == klass and start <= t <= end and r.startswith(route_prefix))

    def p95_ms(self, route: str, start: float, end: float) -> float | None:
        """Client-side p95 of ``route``'s answered requests between two times."""
        values = sorted(ms for t, k, r, ms in self.events if r == route and k == "2xx" and start <= t <= end)
        return round(values[int(0.95 * (len(values) - 1))], 1) if values else None


class Client:
    """Requests of every applicant through one session (bounded connection pool)."""

    def __init__(self, session: aiohttp.ClientSession, urls: Mapping[str, str], *, stats: Stats | None = None,
                 deadline: float | None = None, transport_retries: int | None = 3,
                 retry_server_errors: bool = False, require_retry_after: bool = False):
        self.session = session
        self.urls = dict(urls)
        """service -> its base URL."""
        self.stats = stats if stats is not None else Stats()
        self.deadline = deadline
        """Monotonic time after which requests stop being retried (``None``: never)."""
        self.transport_retries = transport_retries
        """Lost connections retried this many times (``None``: until the deadline)."""
        self.retry_server_errors = retry_server_errors
        """Retry 5xx answers other than 503 (after a capped backoff) instead of refusing them."""
        self.require_retry_after = require_retry_after
        """Refuse a 429/503 without ``Retry-After`` (tests: the contract promises one)."""

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    async def call(self, method: str, service: str, path: str, route: str, *,
                   ok: Container[int] | None = (200, 201, 202), accept: Callable[[Answer], bool] | None = None,
                   json: Any = None, data: Callable[[], Any] | None = None, headers: Mapping[str, str] | None = None,
                   raw: bytes | None = None, deadline: float | None = None,
                   on_shed: Callable[[Answer], None] | None = None) -> Answer:
        """Send until answered other than 429/503 (and 5xx, with ``retry_server_errors``); an
        ``ok`` status (or an answer ``accept`` takes) is returned (``ok=None``: any), anything else
        is counted as an error and raises `Refused`. ``data`` builds a fresh body for every try.
        ``on_shed`` sees every 429/503 (counted already) before it is waited out: it may raise to
        stop retrying (e.g. to come back another way)."""
        url = self.urls[service] + path
        deadline = deadline if deadline is not None else self.deadline
        lost = failed = 0  # lost connections; 5xx answers retried
        place: str | None = None  # the cookies a refusal set (a place in a line), sent with the retries
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise Refused(f"{route}: no answer other than 429/503/5xx before the deadline")
            started = time.monotonic()
            sent = headers if place is None else {**(headers or {}), "Cookie": place}
            try:
                async with self.session.request(method, url, json=json, headers=sent,
                                                data=data() if data is not None else raw) as r:
                    text = await r.text()
                    status, answer_headers = r.status, dict(r.headers)
                    if status in SHED and r.cookies:  # as a browser keeps them for the same caller
                        place = "; ".join(f"{name}={morsel.value}" for name, morsel in r.cookies.items())
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.stats.statuses[f"{route} {type(exc).__name__}"] += 1
                self.stats.record(route, "error", "transport", started, f"{type(exc).__name__}: {exc}")
                lost += 1
                if self.transport_retries is not None and lost > self.transport_retries:
                    raise Refused(f"{route}: {exc!r}") from exc
                await asyncio.sleep(_backoff(lost))
                continue
            self.stats.statuses[f"{route} {status}"] += 1
            try:
                body: Any = jsonlib.loads(text) if text else None
            except ValueError:
                body = text
            answer = Answer(status, body, answer_headers)
            if status in SHED:
                self.stats.record(route, "shed", status, started)
                self.stats.retry_after_s[route].append(retry_after_s(answer_headers))
                if "Retry-After" not in answer_headers:
                    self.stats.unhinted[f"{route} {status}"] += 1
                    if self.require_retry_after:
                        raise Refused(f"{route}: {status} without Retry-After: {text[:200]}")
                self.stats.shed_by_reason[f"{route} {status} {_reason(body)}"] += 1
                if on_shed is not None:
                    on_shed(answer)
                await asyncio.sleep(retry_after_s(answer_headers) * random.uniform(1.0, 1.2))
                continue
            if status >= 500 and self.retry_server_errors:
                self.stats.record(route, "error", status, started, body if body is not None else text)
                failed += 1
                await asyncio.sleep(_backoff(failed))
                continue
            if (accept(answer) if accept is not None else (ok is None or status in ok)):
                success = 200 <= status < 300
                self.stats.record(route, "2xx" if success else "expected", status if success else answer.code,
                                  started)
                if not success and accept is not None:
                    self.stats.expected[f"{route} {answer.code}"] += 1
                return answer
            self.stats.record(route, "error", status, started, body if body is not None else text)
            raise Refused(f"{route}: HTTP {status} {text[:200]}")


class Bank:
    """The partner bank's SNAP calls through a ``Client`` (its token kept, renewed when refused)."""

    def __init__(self, client: Client, sim: BankSimulator):
        self.client = client
        self.sim = sim
        self._token: str | None = None
        self._lock = asyncio.Lock()

    async def token(self, *, renew: bool = False, stale: str | None = None) -> str:
        """The access token (a new one with ``renew``, or when the one in use is ``stale``)."""
        async with self._lock:
            if self._token is None or renew or (stale is not None and self._token == stale):
                path, headers, raw = self.sim.build_token_request()
                answer = await self.client.call("POST", "payment", path, TOKEN_ROUTE, headers=headers, raw=raw,
                                                ok=(200,))
                self._token = str(answer.data["accessToken"])
                self.sim.access_token = self._token
            return self._token

    def customer_no(self, virtual_account_no: str) -> str:
        prefix = self.sim.partner_service_id
        if not virtual_account_no.startswith(prefix):
            raise Refused(f"VA {virtual_account_no} is not of bank {prefix}")
        return virtual_account_no[len(prefix):]

    async def build(self, customer_no: str, amount: int, payment_request_id: str, **body: Any) -> SignedRequest:
        """A signed payment request (``body``: more of ``BankSimulator.payment_body``'s fields,
        e.g. ``flag_advise``, ``paid_at``)."""
        from payment_service.adapters.snap import PAYMENT_PATH

        payment = self.sim.payment_body(customer_no, amount, payment_request_id=payment_request_id, **body)
        return self.sim.build_signed_request(PAYMENT_PATH, payment, access_token=await self.token())

    async def send(self, request: SignedRequest, codes: tuple[str, ...] | None) -> Answer:
        """POST a built payment request; the answer's SNAP code must be one of ``codes`` (``None``:
        any answer is returned). A refused token is renewed and the request signed again."""
        from payment_service.adapters.snap import PAYMENT_PATH

        path, headers, raw = request
        for _ in range(3):
            answer = await self.client.call(
                "POST", "payment", path, PAYMENT_ROUTE, headers=headers, raw=raw,
                ok=None if codes is None else (), accept=None if codes is None else (
                    lambda a: a.code in codes or a.code == INVALID_TOKEN))
            if answer.code != INVALID_TOKEN and answer.status != 401:
                return answer
            # the token expired (or the platform was restarted): renew it and sign again
            token = headers.get("Authorization", "").removeprefix("Bearer ")
            path, headers, raw = self.sim.build_signed_request(PAYMENT_PATH, jsonlib.loads(raw),
                                                               access_token=await self.token(stale=token))
        raise Refused("SNAP token refused three times")

    async def pay(self, customer_no: str, amount: int, codes: tuple[str, ...] = (PAY_OK,)) -> Answer:
        return await self.send(await self.build(customer_no, amount, uuid.uuid4().hex), codes)


_CODE = re.compile(r"(?<![0-9])[0-9]{6}(?![0-9])")


class SmsInbox:
    """The development sink of texts (one JSON line ``{"phone", "text", "sent_at"}`` each), read
    incrementally: whole lines only, from where the last read stopped."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._offset = 0
        self._texts: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        self._read_at = 0.0

    def _read(self) -> None:
        """What was appended since the last read (at most every 50 ms: many applicants share one inbox)."""
        if time.monotonic() - self._read_at < 0.05:
            return
        self._read_at = time.monotonic()
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        for line in chunk[:end].splitlines():
            record = jsonlib.loads(line)
            self._texts[record["phone"]].append((datetime.fromisoformat(record["sent_at"]), record["text"]))

    def code_since(self, phone: str, since: datetime) -> str | None:
        """The code of the newest text to ``phone`` sent after ``since``, if one arrived."""
        self._read()
        for sent_at, text in reversed(self._texts[phone]):
            if sent_at > since:
                codes = _CODE.findall(text)
                return codes[0] if len(codes) == 1 else None
            break
        return None

    async def code(self, phone: str, since: datetime, timeout_s: float = 60) -> str:
        found: str = await eventually(lambda: self.code_since(phone, since), timeout_s=timeout_s, interval_s=0.1,
                                      message=f"a sign-in code for {phone} in {self.path}")
        return found


class Buyer:
    """A buyer of the cross-service tests: an account and its orders."""

    def __init__(self, session: aiohttp.ClientSession, order_url: str, *, timeout_s: float = 120):
        self.client = Client(session, {"order": order_url}, transport_retries=0, require_retry_after=True)
        self.session = session
        self.url = order_url
        self.token = ""
        self.refresh_token = ""
        self.account_id = ""
        self.timeout_s = timeout_s

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout_s

    async def register(self, name: str = "Pelamar CASN", phone: str = "+6281200000000") -> None:
        answer = await self.client.call("POST", "order", "/v1/accounts", "POST /v1/accounts", ok=(201,),
                                        json={"name": name, "phone": phone}, deadline=self._deadline())
        self.token = str(answer.data["token"])
        self.account_id = str(answer.data["account_id"])

    async def request_code(self, phone: str) -> None:
        """A sign-in code for ``phone`` (a 429 past the limits is waited out for its Retry-After)."""
        await self.client.call("POST", "order", "/v1/auth/otp", "POST /v1/auth/otp", ok=(202,),
                               json={"phone": phone}, deadline=self._deadline())

    async def sign_in(self, phone: str, inbox: SmsInbox) -> dict[str, Any]:
        """Sign in with the code sent to ``phone`` (read from the development sink): the code of a
        text sent after this request, never an earlier one's."""
        since = datetime.now(UTC)
        await self.request_code(phone)
        code = await inbox.code(phone, since, timeout_s=self.timeout_s)
        answer = await self.client.call("POST", "order", "/v1/auth/token", "POST /v1/auth/token", ok=(200,),
                                        json={"phone": phone, "code": code}, deadline=self._deadline())
        self._signed_in(answer.data)
        return answer.data

    def _signed_in(self, data: dict[str, Any]) -> None:
        self.token, self.refresh_token = str(data["token"]), str(data["refresh_token"])
        self.account_id = str(data["account_id"])

    async def refresh(self) -> dict[str, Any]:
        """A new token pair for the current refresh token (which is used up)."""
        answer = await self.client.call("POST", "order", "/v1/auth/refresh", "POST /v1/auth/refresh", ok=(200,),
                                        json={"refresh_token": self.refresh_token}, deadline=self._deadline())
        self._signed_in(answer.data)
        return answer.data

    async def order(self, quantity: int = 2, bank: str | None = None, payment_method: str | None = None) -> str:
        """Place an order; a 429 or 503 is waited out for its ``Retry-After`` and the same request
        (the same Idempotency-Key) sent again, as a well-behaved client does."""
        body: dict[str, Any] = {"quantity": quantity}
        if bank is not None:
            body["bank"] = bank
        if payment_method is not None:
            body["payment_method"] = payment_method
        answer = await self.client.call("POST", "order", "/v1/orders", "POST /v1/orders", ok=(202,), json=body,
                                        headers={**self.auth, "Idempotency-Key": str(uuid.uuid4())},
                                        deadline=self._deadline())
        return str(answer.data["order_id"])

    async def get(self, order_id: str) -> dict[str, Any]:
        answer = await self.client.call("GET", "order", f"/v1/orders/{order_id}", "GET /v1/orders/{id}", ok=(200,),
                                        headers=self.auth, deadline=self._deadline())
        return answer.data

    async def bill(self, order_id: str, timeout_s: float = 60) -> dict[str, Any]:
        """The payment instructions, once the payment service has issued the bill."""
        async def ready() -> dict[str, Any] | None:
            order = await self.get(order_id)
            payment: dict[str, Any] | None = order["payment"]
            if payment is None and order["status"] != "AWAITING_PAYMENT":  # it will never get one
                raise AssertionError(f"order {order_id} is {order['status']} without a bill: {order}")
            return payment

        found: dict[str, Any] = await eventually(ready, timeout_s=timeout_s, message=f"bill of {order_id}")
        return found

    async def billed_order(self, quantity: int = 2) -> tuple[str, dict[str, Any]]:
        """An order of ``quantity`` stamps, placed: its id and its bill (payment instructions)."""
        order_id = await self.order(quantity)
        return order_id, await self.bill(order_id)

    async def pay(self, order_id: str, bank: BankSimulator, customer_no: Callable[[str], str]) -> None:
        """The bank pays the order's bill (``customer_no``: of the bill's virtual account); paid."""
        bill = await self.bill(order_id)
        _, body = await bank.pay(customer_no(bill["virtual_account_no"]), bill["amount"])
        assert body["responseCode"] == PAY_OK, body

    async def paid_order(self, quantity: int, bank: BankSimulator, customer_no: Callable[[str], str]) -> str:
        """An order of ``quantity`` stamps, placed and paid; its id."""
        order_id = await self.order(quantity)
        await self.pay(order_id, bank, customer_no)
        return order_id

    async def refund(self, order_id: str, key: str | None = None, *, ok: Container[int] = (202,)) -> Answer:
        """``POST /v1/orders/{id}/refund``: refund the order's unused stamps (``key``: the
        Idempotency-Key, fresh by default)."""
        return await self.client.call("POST", "order", f"/v1/orders/{order_id}/refund", "POST /v1/orders/{id}/refund",
                                      ok=ok, headers={**self.auth, "Idempotency-Key": key or str(uuid.uuid4())},
                                      deadline=self._deadline())

    async def status_becomes(self, order_id: str, status: str, timeout_s: float = 90) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            order = await self.get(order_id)
            return order if order["status"] == status else None

        found: dict[str, Any] = await eventually(reached, timeout_s=timeout_s,
                                                 message=f"order {order_id} {status}")
        return found
