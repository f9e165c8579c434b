"""The rush's applicants over HTTP: every answer classified, sheds honoured, the bank simulated.

Every HTTP answer is classified: ``2xx``; ``429``/``503`` = shed (the ``Retry-After`` is honoured
and the request sent again, with the same ``Idempotency-Key``); a SNAP refusal the scenario asked
for (wrong amount ``4042513``, an exact replay's ``4042518``) = expected; anything else, and any
transport failure, = error (counted by route and status, the first bodies kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json as jsonlib
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pikepdf
from payment_service.snap.banksim import PAYMENT_PATH, BankSimulator, SignedRequest
from emeterai_testkit.documents import sample_pdf

MAX_ERROR_BODIES = 8
MAX_RETRY_AFTER_S = 60.0
TRANSPORT_RETRIES = 3
PAY_OK = "2002500"
WRONG_AMOUNT = "4042513"
REPLAYED = "4042518"
INVALID_TOKEN = "4012501"


def documents(count: int = 4) -> list[bytes]:
    """A few distinct applicant documents (1 and 2 pages, differing titles), made once."""
    docs = []
    for i in range(count):
        pdf = pikepdf.open(io.BytesIO(sample_pdf(1 + i % 2)))
        pdf.docinfo["/Title"] = f"Surat lamaran CASN 2024 - contoh {i + 1}"
        out = io.BytesIO()
        pdf.save(out)
        docs.append(out.getvalue())
    return docs


@dataclass
class Stats:
    """What the simulator saw, by route: answers by class, shed by code, errors with bodies."""

    answers: Counter[str] = field(default_factory=Counter)       # "2xx", "shed", "expected", "error"
    shed: Counter[str] = field(default_factory=Counter)          # "429" / "503"
    shed_by_route: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)        # "<route> <status|transport>"
    expected: Counter[str] = field(default_factory=Counter)      # "<route> <SNAP code>"
    error_bodies: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    retry_after_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    missing_retry_after: Counter[str] = field(default_factory=Counter)
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

    def count(self, klass: str, start: float, end: float, route_prefix: str = "") -> int:
        return sum(1 for t, k, r, _ in self.events if k == klass and start <= t <= end and r.startswith(route_prefix))

    def p95_ms(self, route: str, start: float, end: float) -> float | None:
        """Client-side p95 of ``route``'s answered requests between two times."""
        values = sorted(ms for t, k, r, ms in self.events if r == route and k == "2xx" and start <= t <= end)
        return round(values[int(0.95 * (len(values) - 1))], 1) if values else None


class Unexpected(Exception):
    """An answer the scenario did not allow: the applicant gives up (already counted as an error)."""


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


def _retry_after(headers: Any) -> float:
    value = headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 1.0
    return min(MAX_RETRY_AFTER_S, max(0.2, seconds))


class Client:
    """One shared aiohttp session (bounded connection pool) for every applicant."""

    def __init__(self, session: aiohttp.ClientSession, stats: Stats, urls: dict[str, str], deadline: float):
        self.session = session
        self.stats = stats
        self.urls = urls
        self.deadline = deadline  # monotonic time after which applicants stop retrying

    async def call(self, method: str, service: str, path: str, route: str, *,
                   ok: tuple[int, ...] = (200, 201, 202), json: Any = None,
                   data: Callable[[], Any] | None = None, headers: dict[str, str] | None = None,
                   raw: bytes | None = None, accept: Callable[[Answer], bool] | None = None) -> Answer:
        """Send until answered other than 429/503; ``ok`` statuses (or ``accept``) are returned,
        anything else is counted as an error and raises `Unexpected`."""
        url = self.urls[service] + path
        transport_failures = 0
        while True:
            started = time.monotonic()
            try:
                async with self.session.request(method, url, json=json, headers=headers,
                                                data=data() if data is not None else raw) as r:
                    text = await r.text()
                    status, answer_headers = r.status, dict(r.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.stats.record(route, "error", "transport", started, f"{type(exc).__name__}: {exc}")
                transport_failures += 1
                if transport_failures > TRANSPORT_RETRIES or time.monotonic() > self.deadline:
                    raise Unexpected(f"{route}: {exc!r}") from exc
                await asyncio.sleep(0.5 * 2 ** transport_failures)
                continue
            try:
                body: Any = jsonlib.loads(text) if text else None
            except ValueError:
                body = text
            answer = Answer(status, body, answer_headers)
            if status in (429, 503):
                self.stats.record(route, "shed", status, started)
                self.stats.retry_after_s[route].append(_retry_after(answer_headers))
                if "Retry-After" not in answer_headers:
                    self.stats.missing_retry_after[route] += 1
                if time.monotonic() > self.deadline:
                    raise Unexpected(f"{route}: still shed at the deadline")
                await asyncio.sleep(_retry_after(answer_headers) * random.uniform(1.0, 1.2))
                continue
            if accept is not None:
                if accept(answer):
                    self.stats.record(route, "2xx" if 200 <= status < 300 else "expected",
                                      status if 200 <= status < 300 else _code(body), started)
                    if not 200 <= status < 300:
                        self.stats.expected[f"{route} {_code(body)}"] += 1
                    return answer
            elif status in ok:
                self.stats.record(route, "2xx" if 200 <= status < 300 else "expected", status, started)
                return answer
            self.stats.record(route, "error", status, started, body if body is not None else text)
            raise Unexpected(f"{route}: HTTP {status} {text[:200]}")


def _code(body: Any) -> str:
    if isinstance(body, dict):
        if "responseCode" in body:
            return str(body["responseCode"])
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("code"))
    return ""


class Bank:
    """The bank simulator's SNAP calls through the shared client (token kept and renewed)."""

    def __init__(self, client: Client, sim: BankSimulator):
        self.client = client
        self.sim = sim
        self._token: str | None = None
        self._lock = asyncio.Lock()

    async def token(self, *, renew: bool = False) -> str:
        async with self._lock:
            if self._token is None or renew:
                path, headers, raw = self.sim.build_token_request()
                answer = await self.client.call("POST", "payment", path, "POST /snap/access-token", headers=headers,
                                                raw=raw, ok=(200,))
                self._token = str(answer.body["accessToken"])
            return self._token

    def customer_no(self, virtual_account_no: str) -> str:
        prefix = self.sim.partner_service_id
        if not virtual_account_no.startswith(prefix):
            raise Unexpected(f"VA {virtual_account_no} is not of bank {prefix}")
        return virtual_account_no[len(prefix):]

    async def build(self, customer_no: str, amount: int, payment_request_id: str) -> SignedRequest:
        body = self.sim.payment_body(customer_no, amount, payment_request_id=payment_request_id)
        return self.sim.build_signed_request(PAYMENT_PATH, body, access_token=await self.token())

    async def send(self, request: SignedRequest, codes: tuple[str, ...]) -> Answer:
        """POST a built payment request; the answer's SNAP code must be one of ``codes``."""
        path, headers, raw = request
        for _ in range(3):
            answer = await self.client.call(
                "POST", "payment", path, "POST /snap/transfer-va/payment", headers=headers, raw=raw,
                accept=lambda a: _code(a.body) in codes or _code(a.body) == INVALID_TOKEN)
            if _code(answer.body) != INVALID_TOKEN:
                return answer
            # the token expired (or the platform was restarted): renew it and sign again
            body = jsonlib.loads(raw)
            path, headers, raw = self.sim.build_signed_request(PAYMENT_PATH, body,
                                                               access_token=await self.token(renew=True))
        raise Unexpected("SNAP token refused three times")

    async def pay(self, customer_no: str, amount: int, codes: tuple[str, ...] = (PAY_OK,)) -> Answer:
        return await self.send(await self.build(customer_no, amount, uuid.uuid4().hex), codes)


@dataclass
class Applicant:
    """One simulated CASN applicant: an account, one order of 2 stamps, 2 documents to stamp."""

    index: int
    phase: str
    scenario: str = "normal"         # normal | late | duplicate | wrong_amount
    token: str = ""
    order_id: str = ""
    amount: int = 0
    paid_at: float | None = None     # monotonic time of the successful payment answer
    fulfilled: bool = False
    stamping_ids: list[str] = field(default_factory=list)
    done: int = 0
    failure: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Pacer:
    """Spaces status polls (order FULFILLED, stamping DONE) to at most ``rate_per_s`` in all, so
    that thousands of waiting applicants do not turn into a polling storm; ``release`` lifts it."""

    rate_per_s: float
    _next: float = 0.0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, delay: float) -> None:
        """Sleep ``delay`` (with jitter), then take the next free polling slot."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait(), delay * random.uniform(0.8, 1.2))
        if self.released.is_set():
            return
        now = time.monotonic()
        self._next = max(self._next, now) + 1 / self.rate_per_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait(), self._next - now)

    def release(self) -> None:
        self.released.set()


class Script:
    """What applicants do; the counters (``arrived``...) feed the progress bars."""

    def __init__(self, client: Client, bank: Bank, docs: list[bytes], poll_rate_per_s: float):
        self.client = client
        self.bank = bank
        self.docs = docs
        self.pacers = {"order": Pacer(poll_rate_per_s), "stamping": Pacer(poll_rate_per_s)}
        self.arrived: Counter[str] = Counter()
        self.ordered: Counter[str] = Counter()
        self.paid: Counter[str] = Counter()
        self.uploaded: Counter[str] = Counter()
        self.failures: list[str] = []
        self.poll_rate_per_s = poll_rate_per_s

    def reset_pacers(self) -> None:
        self.pacers = {"order": Pacer(self.poll_rate_per_s), "stamping": Pacer(self.poll_rate_per_s)}

    async def buy(self, a: Applicant, *, wait_fulfilled: bool = True) -> None:
        self.arrived[a.phase] += 1
        try:
            await self._register(a)
            await self._order(a)
            customer_no = await self._bill(a)
            await self._pay(a, customer_no)
            if wait_fulfilled:
                await self._fulfilled(a)
        except Unexpected as exc:
            self._fail(a, exc)

    async def stamp(self, a: Applicant) -> None:
        if a.failure is not None or not a.order_id:
            return
        try:
            await self._quota(a, 2)
            await asyncio.gather(*(self._upload(a, n) for n in range(2)))
            await asyncio.gather(*(self._stamped(a, sid) for sid in a.stamping_ids))
        except Unexpected as exc:
            self._fail(a, exc)

    async def buy_and_stamp(self, a: Applicant) -> None:
        await self.buy(a)
        await self.stamp(a)

    def _fail(self, a: Applicant, exc: Exception) -> None:
        a.failure = str(exc)
        if len(self.failures) < MAX_ERROR_BODIES:
            self.failures.append(f"applicant {a.phase}{a.index} ({a.scenario}): {exc}")

    async def _register(self, a: Applicant) -> None:
        answer = await self.client.call(
            "POST", "order", "/v1/accounts", "POST /v1/accounts", ok=(201,),
            json={"name": f"Pelamar CASN {a.phase}{a.index}", "phone": f"+62812{a.index:08d}"},
            headers={"Idempotency-Key": f"rush-account-{uuid.uuid4()}"})
        a.token = answer.body["token"]

    async def _order(self, a: Applicant) -> None:
        key = f"rush-order-{uuid.uuid4()}"  # the same key on every retry of this order
        answer = await self.client.call("POST", "order", "/v1/orders", "POST /v1/orders", ok=(202,),
                                        json={"quantity": 2}, headers={**a.auth, "Idempotency-Key": key})
        a.order_id, a.amount = answer.body["order_id"], int(answer.body["amount"])
        self.ordered[a.phase] += 1

    async def _get_order(self, a: Applicant) -> dict[str, Any]:
        answer = await self.client.call("GET", "order", f"/v1/orders/{a.order_id}", "GET /v1/orders/{id}",
                                        ok=(200,), headers=a.auth)
        body: dict[str, Any] = answer.body
        return body

    async def _bill(self, a: Applicant) -> str:
        delay = 0.3
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            order = await self._get_order(a)
            if order["payment"] is not None:
                if order["payment"]["amount"] != a.amount:
                    raise Unexpected(f"bill amount {order['payment']['amount']} != order amount {a.amount}")
                return self.bank.customer_no(order["payment"]["virtual_account_no"])
            if order["status"] not in ("AWAITING_PAYMENT",):
                raise Unexpected(f"order {a.order_id} is {order['status']} before its bill")
            if time.monotonic() > self.client.deadline:
                raise Unexpected(f"no bill for order {a.order_id} before the deadline")
            delay = min(delay * 1.5, 3.0)

    async def _pay(self, a: Applicant, customer_no: str) -> None:
        if a.scenario == "late":
            await asyncio.sleep(random.uniform(3.0, 8.0))
        if a.scenario == "wrong_amount":
            refused = await self.bank.pay(customer_no, a.amount + 2_500, codes=(WRONG_AMOUNT,))
            flag = refused.body.get("virtualAccountData", {}).get("paymentFlagStatus")
            if flag not in (None, "01"):
                raise Unexpected(f"wrong amount answered paymentFlagStatus {flag}")
        if a.scenario == "duplicate":
            request = await self.bank.build(customer_no, a.amount, uuid.uuid4().hex)
            # the same signed callback twice at once: one capture, the twin answered 2002500 or 4042518
            answers = await asyncio.gather(self.bank.send(request, (PAY_OK, REPLAYED)),
                                           self.bank.send(request, (PAY_OK, REPLAYED)))
            if PAY_OK not in {_code(x.body) for x in answers}:
                raise Unexpected(f"duplicate callbacks of {a.order_id}: no 2002500 in "
                                 f"{[_code(x.body) for x in answers]}")
        else:
            await self.bank.pay(customer_no, a.amount)
        a.paid_at = time.monotonic()
        self.paid[a.phase] += 1

    async def _fulfilled(self, a: Applicant) -> None:
        delay = 1.0
        while True:
            await self.pacers["order"].wait(delay)
            order = await self._get_order(a)
            if order["status"] == "FULFILLED":
                if len(order["serials"]) != 2:
                    raise Unexpected(f"order {a.order_id} FULFILLED with {len(order['serials'])} serials")
                a.fulfilled = True
                return
            if order["status"] not in ("AWAITING_PAYMENT", "PAID"):
                raise Unexpected(f"paid order {a.order_id} ended {order['status']}")
            if time.monotonic() > self.client.deadline:
                raise Unexpected(f"order {a.order_id} not FULFILLED before the deadline")
            delay = min(delay * 1.5, 8.0)

    async def _quota(self, a: Applicant, needed: int) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            answer = await self.client.call("GET", "stamping", "/v1/quota", "GET /v1/quota", ok=(200,),
                                            headers=a.auth)
            if int(answer.body["available"]) >= needed:
                return
            if time.monotonic() > self.client.deadline:
                raise Unexpected(f"quota of {a.order_id} never showed {needed} available")
            delay = min(max(delay * 1.5, 0.5), 3.0)

    async def _upload(self, a: Applicant, n: int) -> None:
        document = self.docs[(a.index * 2 + n) % len(self.docs)]
        key = f"rush-stamping-{uuid.uuid4()}"

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("file", document, filename=f"dokumen-{n + 1}.pdf", content_type="application/pdf")
            for name, value in (("page", "1"), ("x", "420"), ("y", "60"), ("size", "100"),
                                ("reason", "Lamaran CASN 2024")):
                data.add_field(name, value)
            return data

        answer = await self.client.call("POST", "stamping", "/v1/stampings", "POST /v1/stampings", ok=(202,),
                                        data=form, headers={**a.auth, "Idempotency-Key": key})
        a.stamping_ids.append(str(answer.body["stamping_id"]))
        self.uploaded[a.phase] += 1

    async def _stamped(self, a: Applicant, stamping_id: str) -> None:
        delay = 2.0
        while True:
            await self.pacers["stamping"].wait(delay)
            answer = await self.client.call("GET", "stamping", f"/v1/stampings/{stamping_id}",
                                            "GET /v1/stampings/{id}", ok=(200,), headers=a.auth)
            status = answer.body["status"]
            if status == "DONE":
                a.done += 1
                return
            if status == "FAILED":
                raise Unexpected(f"stamping {stamping_id} FAILED: {answer.body.get('error')}")
            if time.monotonic() > self.client.deadline:
                raise Unexpected(f"stamping {stamping_id} not DONE before the deadline")
            delay = min(delay * 1.5, 15.0)
