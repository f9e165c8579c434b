"""The rush's applicants: what they do, through the test kit's applicant driver.

Every HTTP answer goes through ``emeterai_testkit.clients.Client`` and is classified there:
``2xx``; ``429``/``503`` = shed (the ``Retry-After`` is honoured and the request sent again, with
the same ``Idempotency-Key``); a SNAP refusal the scenario asked for (wrong amount ``4042513``, an
exact replay's ``4042518``) = expected; anything else, and any transport failure, = error
(counted by route and status, the first bodies kept).

A QRIS applicant (``method`` ``qris``) orders with ``payment_method: "qris"``, polls its order
until ``payment.qr_content`` appears (the payment worker asks the acquirer for it: late while the
acquirer is down), pays it at the acquirer simulator (``POST /sim/pay`` with the QR's content, as a
payer's bank app would: retried while the acquirer cannot be reached), then waits for the credit
as a VA applicant does. Its order answered ``503``/``429`` is waited out for its ``Retry-After``;
after ``qris_fallback_after`` answers with code ``qris_unavailable`` it orders by VA instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pikepdf
from emeterai_testkit.clients import (
    MAX_ERROR_BODIES,
    PAY_OK,
    REPLAYED,
    WRONG_AMOUNT,
    Answer,
    Bank,
    Client,
    Refused,
    SmsInbox,
)
from emeterai_testkit.documents import sample_pdf

Unexpected = Refused
"""An answer the scenario did not allow: the applicant gives up (already counted as an error)."""

QRIS_UNAVAILABLE = "qris_unavailable"
LONG_POLL_S = 25
"""``wait_s`` of the order view's long polls, as the page asks (``web/src/api.js``, ``follow``)."""
"""The order api's code for a QRIS order it cannot take now (the acquirer is down): come back later."""


class FallBack(Exception):
    """A QRIS order refused ``qris_unavailable`` too often: the applicant pays by VA instead."""


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
class Applicant:
    """One simulated CASN applicant: an account, one order of 2 stamps, 2 documents to stamp."""

    index: int
    phase: str
    scenario: str = "normal"         # normal | late | duplicate | wrong_amount
    method: str = "va"
    """How the order is paid: ``va`` or ``qris`` (``va`` after a fall-back)."""
    wanted_qris: bool = False
    """Chose QRIS (even if it fell back to VA)."""
    fell_back: bool = False
    qris_sheds: int = 0
    """429/503 answers to its QRIS order (each waited out)."""
    qris_unavailable: int = 0
    """Of those, answers with code ``qris_unavailable``."""
    ordered_at: float | None = None  # monotonic time POST /v1/orders answered 202
    billed_at: float | None = None   # monotonic time the bill (VA number or QR) was seen
    signs_in: bool = True
    """Signs in with a phone code (POST /v1/auth/otp + /v1/auth/token) rather than POST /v1/accounts."""
    phone: str = ""
    refresh_token: str = ""
    token_expires: float = 0.0
    """Monotonic time the sign-in's access token expires (refreshed a minute before)."""
    refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: str = ""
    order_id: str = ""
    order_view: dict[str, Any] | None = None
    """The order view as last read, with its ``ETag`` (``order_etag``): where the next long poll starts."""
    order_etag: str = ""
    amount: int = 0
    paid_at: float | None = None     # monotonic time of the successful payment answer
    fulfilled: bool = False
    stamping_ids: list[str] = field(default_factory=list)
    done: int = 0
    failure: str | None = None
    refunds: bool = False
    """Stamps one document only and refunds the other, unused stamp (``POST /v1/orders/{id}/refund``)."""
    refund: dict[str, Any] | None = None

    @property
    def uploads(self) -> int:
        return 1 if self.refunds else 2

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Pacer:
    """Spaces status polls (stamping DONE; orders are long-polled) to at most ``rate_per_s`` in all, so
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

    def __init__(self, client: Client, bank: Bank, docs: list[bytes], poll_rate_per_s: float,
                 inbox: SmsInbox | None = None, run_id: int = 0, acquirer: Client | None = None,
                 qris_fallback_after: int = 3):
        self.client = client
        self.acquirer = acquirer
        """The payers' calls to the acquirer simulator (service ``acquirer``; its own ``Stats``)."""
        self.qris_fallback_after = qris_fallback_after
        """``qris_unavailable`` answers before a QRIS applicant orders by VA (0: never)."""
        self.qris_shed_codes: Counter[str] = Counter()
        """The 429/503 answers to QRIS orders, by ``"<status> <code>"``."""
        self.qris_unavailable_at: list[float] = []
        """Monotonic times of the ``qris_unavailable`` answers (not saturation: the acquirer is down)."""
        self.notify_failed = 0
        """/sim/pay answers 500: the QR paid, the acquirer's notify failed (the platform's query finds it)."""
        self.inbox = inbox
        """The texts the platform sent (its development sink), where signing-in applicants read their code."""
        self.run_id = run_id
        """Part of every applicant's phone, so that runs (and phases) never share a phone."""
        self.bank = bank
        self.docs = docs
        self.pacers = {"stamping": Pacer(poll_rate_per_s)}
        """The stampings' status polls (orders are followed by long polls, ``_follow``)."""
        self.arrived: Counter[str] = Counter()
        self.ordered: Counter[str] = Counter()
        self.paid: Counter[str] = Counter()
        self.uploaded: Counter[str] = Counter()
        self.refunded: Counter[str] = Counter()
        self.failures: list[str] = []
        self.poll_rate_per_s = poll_rate_per_s

    def reset_pacers(self) -> None:
        self.pacers = {"stamping": Pacer(self.poll_rate_per_s)}

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
            await asyncio.gather(*(self._upload(a, n) for n in range(a.uploads)))
            await asyncio.gather(*(self._stamped(a, sid) for sid in a.stamping_ids))
            if a.refunds:
                await self._refund(a)
        except Unexpected as exc:
            self._fail(a, exc)

    async def buy_and_stamp(self, a: Applicant) -> None:
        await self.buy(a)
        await self.stamp(a)

    def _fail(self, a: Applicant, exc: Exception) -> None:
        a.failure = str(exc)
        if len(self.failures) < MAX_ERROR_BODIES:
            self.failures.append(f"applicant {a.phase}{a.index} ({a.scenario}): {exc}")

    def phone(self, a: Applicant) -> str:
        phase = "wac".index(a.phase) if a.phase in "wac" else 9
        return f"+628{self.run_id % 10_000:04d}{phase}{a.index:07d}"

    async def _register(self, a: Applicant) -> None:
        a.phone = self.phone(a)
        if a.signs_in and self.inbox is not None:
            await self._sign_in(a, self.inbox)
            return
        answer = await self.client.call(
            "POST", "order", "/v1/accounts", "POST /v1/accounts", ok=(201,),
            json={"name": f"Pelamar CASN {a.phase}{a.index}", "phone": a.phone},
            headers={"Idempotency-Key": f"rush-account-{uuid.uuid4()}"})
        a.token = answer.body["token"]

    async def _sign_in(self, a: Applicant, inbox: SmsInbox) -> None:
        """A code to the applicant's phone, read from the development sink (the text sent after
        this request), then the token for it."""
        since = datetime.now(UTC)
        await self.client.call("POST", "order", "/v1/auth/otp", "POST /v1/auth/otp", ok=(202,),
                               json={"phone": a.phone})
        try:
            code = await inbox.code(a.phone, since, timeout_s=120)
        except AssertionError as exc:
            raise Unexpected(f"no sign-in code for {a.phone}: {exc}") from exc
        answer = await self.client.call("POST", "order", "/v1/auth/token", "POST /v1/auth/token", ok=(200,),
                                        json={"phone": a.phone, "code": code})
        self._signed_in(a, answer.body)

    def _signed_in(self, a: Applicant, body: dict[str, Any]) -> None:
        a.token, a.refresh_token = body["token"], body["refresh_token"]
        a.token_expires = time.monotonic() + float(body["expires_in_s"])

    async def _fresh(self, a: Applicant) -> None:
        """Refresh a sign-in's access token a minute before it expires (once, whoever asks first:
        a refresh token presented twice would revoke the applicant's sessions)."""
        if not a.refresh_token:
            return
        async with a.refreshing:
            if time.monotonic() < a.token_expires - 60:
                return
            answer = await self.client.call("POST", "order", "/v1/auth/refresh", "POST /v1/auth/refresh", ok=(200,),
                                            json={"refresh_token": a.refresh_token})
            self._signed_in(a, answer.body)

    async def _order(self, a: Applicant) -> None:
        key = f"rush-order-{uuid.uuid4()}"  # the same key on every retry of this order
        await self._fresh(a)
        body: dict[str, Any] = {"quantity": 2}
        on_shed: Callable[[Answer], None] | None = None
        if a.method == "qris":
            body["payment_method"] = "qris"
            on_shed = functools.partial(self._qris_shed, a)
        try:
            answer = await self.client.call("POST", "order", "/v1/orders", "POST /v1/orders", ok=(202,),
                                            json=body, headers={**a.auth, "Idempotency-Key": key}, on_shed=on_shed)
        except FallBack:
            a.method, a.fell_back = "va", True
            await self._order(a)  # a new order (a new key): by VA
            return
        a.order_id, a.amount = answer.body["order_id"], int(answer.body["amount"])
        a.ordered_at = time.monotonic()
        self.ordered[a.phase] += 1

    def _qris_shed(self, a: Applicant, answer: Answer) -> None:
        a.qris_sheds += 1
        self.qris_shed_codes[f"{answer.status} {answer.code or '-'}"] += 1
        if answer.code == QRIS_UNAVAILABLE:
            a.qris_unavailable += 1
            self.qris_unavailable_at.append(time.monotonic())
            if self.qris_fallback_after and a.qris_unavailable >= self.qris_fallback_after:
                raise FallBack(f"{a.qris_unavailable} answers {QRIS_UNAVAILABLE}")

    async def _follow(self, a: Applicant, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The order view once ``until`` takes it, followed as the page follows it: the view, then
        long polls (``If-None-Match`` with its ``ETag``, ``wait_s``) that the order api answers when
        the order changes, or with ``304`` when ``wait_s`` passes first. A ``304`` sooner than asked
        (the api had no room to hold it) is followed by a pause, as on the page."""
        while True:
            if a.order_view is not None and until(a.order_view):
                return a.order_view
            if self.client.past_deadline():
                raise Unexpected(f"order {a.order_id} still {a.order_view and a.order_view['status']} at the deadline")
            await self._fresh(a)
            path, headers = f"/v1/orders/{a.order_id}", a.auth
            if a.order_view is not None and a.order_etag:
                path, headers = f"{path}?wait_s={LONG_POLL_S}", {**headers, "If-None-Match": a.order_etag}
            started = time.monotonic()
            answer = await self.client.call("GET", "order", path, "GET /v1/orders/{id}", ok=(200, 304),
                                            headers=headers)
            if answer.status == 304:
                if time.monotonic() - started < 1.0:
                    await asyncio.sleep(2.0 * random.uniform(0.8, 1.2))
                continue
            a.order_view = answer.body
            a.order_etag = next((v for k, v in answer.headers.items() if k.lower() == "etag"), "")
            if not a.order_etag and not until(a.order_view):  # no ETag to wait on: ask again later, not at once
                await asyncio.sleep(2.0 * random.uniform(0.8, 1.2))

    async def _bill(self, a: Applicant) -> str:
        """The customer number of the order's VA, or the content of its QR (QRIS)."""
        def billed(order: dict[str, Any]) -> bool:
            payment = order["payment"]
            ready = payment is not None and (a.method != "qris" or bool(payment.get("qr_content")))
            return ready or order["status"] != "AWAITING_PAYMENT"

        order = await self._follow(a, billed)
        payment = order["payment"]
        if payment is None or (a.method == "qris" and not payment.get("qr_content")):
            raise Unexpected(f"order {a.order_id} is {order['status']} before its bill")
        if payment["amount"] != a.amount:
            raise Unexpected(f"bill amount {payment['amount']} != order amount {a.amount}")
        a.billed_at = time.monotonic()
        if a.method == "qris":
            if payment.get("method") != "qris":
                raise Unexpected(f"QRIS order {a.order_id} billed {payment.get('method')}")
            return str(payment["qr_content"])
        return self.bank.customer_no(payment["virtual_account_no"])

    async def _pay_qris(self, a: Applicant, qr_content: str) -> None:
        """The payer's bank app pays the QR at the acquirer, which notifies the platform (twice for
        the ``duplicate`` scenario; a QR's amount is fixed, so ``wrong_amount`` pays as ``normal``).
        An unreachable acquirer is tried again until the deadline, as a payer would."""
        if self.acquirer is None:
            raise Unexpected("no acquirer simulator to pay QRIS through")
        if a.scenario == "late":
            await asyncio.sleep(random.uniform(3.0, 8.0))
        answer = await self.acquirer.call(
            "POST", "acquirer", "/sim/pay", "POST /sim/pay", ok=(200, 500),
            json={"qr_content": qr_content, "times": 2 if a.scenario == "duplicate" else 1})
        if answer.status == 500:  # paid; the notify failed: the platform's query of the QR finds it
            self.notify_failed += 1
        a.paid_at = time.monotonic()
        self.paid[a.phase] += 1

    async def _pay(self, a: Applicant, customer_no: str) -> None:
        if a.method == "qris":
            await self._pay_qris(a, customer_no)
            return
        if a.scenario == "late":
            await asyncio.sleep(random.uniform(3.0, 8.0))
        if a.scenario == "wrong_amount":
            refused = await self.bank.pay(customer_no, a.amount + 2_500, codes=(WRONG_AMOUNT,))
            flag = refused.data.get("virtualAccountData", {}).get("paymentFlagStatus")
            if flag not in (None, "01"):
                raise Unexpected(f"wrong amount answered paymentFlagStatus {flag}")
        if a.scenario == "duplicate":
            request = await self.bank.build(customer_no, a.amount, uuid.uuid4().hex)
            # the same signed callback twice at once: one capture, the twin answered 2002500 or 4042518
            answers = await asyncio.gather(self.bank.send(request, (PAY_OK, REPLAYED)),
                                           self.bank.send(request, (PAY_OK, REPLAYED)))
            if PAY_OK not in {x.code for x in answers}:
                raise Unexpected(f"duplicate callbacks of {a.order_id}: no 2002500 in "
                                 f"{[x.code for x in answers]}")
        else:
            await self.bank.pay(customer_no, a.amount)
        a.paid_at = time.monotonic()
        self.paid[a.phase] += 1

    async def _fulfilled(self, a: Applicant) -> None:
        order = await self._follow(a, lambda o: o["status"] not in ("AWAITING_PAYMENT", "PAID"))
        if order["status"] != "FULFILLED":
            raise Unexpected(f"paid order {a.order_id} ended {order['status']}")
        if len(order["serials"]) != 2:
            raise Unexpected(f"order {a.order_id} FULFILLED with {len(order['serials'])} serials")
        a.fulfilled = True

    async def _refund(self, a: Applicant) -> None:
        """Refund the unused stamp (one of two, the other stamped): exactly that serial is refunded,
        for half the order's amount, and paid out."""
        key = f"rush-refund-{uuid.uuid4()}"  # the same key on every retry of this refund
        answer = await self.client.call("POST", "order", f"/v1/orders/{a.order_id}/refund",
                                        "POST /v1/orders/{id}/refund", ok=(202,),
                                        headers={**a.auth, "Idempotency-Key": key})
        refund_id = str(answer.body["refund_id"])

        def settled(order: dict[str, Any]) -> bool:
            found = [r for r in order.get("refunds", ()) if r["refund_id"] == refund_id]
            return bool(found) and found[0]["status"] in ("PAID_OUT", "NOTHING")

        order = await self._follow(a, settled)
        [refund] = [r for r in order["refunds"] if r["refund_id"] == refund_id]
        a.refund = refund
        if (refund["status"], len(refund["serials"]), refund["amount"]) != ("PAID_OUT", 1, a.amount // 2):
            raise Unexpected(f"refund of the unused stamp of {a.order_id} ended {refund}")
        self.refunded[a.phase] += 1

    async def _quota(self, a: Applicant, needed: int) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            await self._fresh(a)
            answer = await self.client.call("GET", "stamping", "/v1/quota", "GET /v1/quota", ok=(200,),
                                            headers=a.auth)
            if int(answer.body["available"]) >= needed:
                return
            if self.client.past_deadline():
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

        await self._fresh(a)
        answer = await self.client.call("POST", "stamping", "/v1/stampings", "POST /v1/stampings", ok=(202,),
                                        data=form, headers={**a.auth, "Idempotency-Key": key})
        a.stamping_ids.append(str(answer.body["stamping_id"]))
        self.uploaded[a.phase] += 1

    async def _stamped(self, a: Applicant, stamping_id: str) -> None:
        delay = 2.0
        while True:
            await self.pacers["stamping"].wait(delay)
            await self._fresh(a)
            answer = await self.client.call("GET", "stamping", f"/v1/stampings/{stamping_id}",
                                            "GET /v1/stampings/{id}", ok=(200,), headers=a.auth)
            status = answer.body["status"]
            if status == "DONE":
                a.done += 1
                return
            if status == "FAILED":
                raise Unexpected(f"stamping {stamping_id} FAILED: {answer.body.get('error')}")
            if self.client.past_deadline():
                raise Unexpected(f"stamping {stamping_id} not DONE before the deadline")
            delay = min(delay * 1.5, 15.0)
