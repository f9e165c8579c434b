"""A QRIS acquirer simulator: the acquirer side of SNAP QR MPM as a real aiohttp HTTP server, for
tests and development. Built on production code (signatures, the EMV builder), never the reverse.

Serves, under ``base_path`` (default ``/snap``): ``/v1.0/access-token/b2b`` (verifies our RSA
signature), ``/v1.0/qr/qr-mpm-generate`` (a real EMV QRIS string with its CRC; ``4094701`` for a
``partnerReferenceNo`` already generated), ``qr-mpm-query``, ``qr-mpm-cancel`` and
``qr-mpm-refund`` (idempotent on ``partnerRefundNo``), all checking our token and HMAC signature.
It plays the payer too: `pay` pays a QR and notifies the merchant's ``qr-mpm-notify`` (taking a
token from the merchant's ``access-token/b2b`` with its own RSA key, then HMAC-signing), or pays
without notifying, notifies twice, notifies late (after ``late_s``), or reports another amount;
`fail_generate` makes the next N generate calls answer ``500``; `time_out_refunds` makes the next N
refund calls answer only after ``slow_s`` (the merchant's timeout); refunds, several per QR, may add
up to the amount paid. `settlement` is its settlement list (paid QRs and refunds). The same controls
are served under ``/sim/`` as JSON: ``POST /sim/pay``, ``/sim/fail-generate``,
``/sim/time-out-refunds``, ``GET /sim/settlement`` (``?format=csv``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from emeterai_shared.files import locked, write_atomic

from payment_service.adapters.banks import BANK_FILE, generate_bank_keys
from payment_service.adapters.snap import QR_NOTIFY_PATH, TOKEN_PATH
from payment_service.adapters.snap.codes import Case, Service
from payment_service.adapters.snap.qris import dynamic_qris
from payment_service.adapters.snap.signatures import (
    format_snap_timestamp,
    load_private_key,
    sign_access_token,
    sign_transaction,
    verify_access_token_signature,
    verify_transaction_signature,
)


@dataclass
class SimQr:
    partner_reference_no: str
    reference_no: str
    amount: int
    qr_content: str
    status: str = "03"
    """SNAP latestTransactionStatus: 00 paid, 03 pending, 05 cancelled, 04 refunded."""
    paid_time: str | None = None
    rrn: str | None = None
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)


def new_acquirer_entry(base_url: str, *, acquirer_id: str = "sim-acquirer") -> tuple[dict[str, str], bytes]:
    """A ``PAYMENT_PARTNERS_FILE`` acquirer entry for a simulator at ``base_url`` (fresh keys on both
    sides, random secrets) and the simulator's own private key (its public half is in the entry)."""
    ours_private, _ = generate_bank_keys()
    theirs_private, theirs_public = generate_bank_keys()
    entry = {
        "acquirer_id": acquirer_id, "base_url": base_url, "client_id": f"merchant-{secrets.token_hex(4)}",
        "client_secret": secrets.token_urlsafe(32), "private_key_pem": ours_private.decode(),
        "merchant_id": "ID1020000000001", "partner_id": f"partner-{secrets.token_hex(4)}", "channel_id": "95221",
        "notify_client_id": f"{acquirer_id}-notify", "notify_client_secret": secrets.token_urlsafe(32),
        "public_key_pem": theirs_public.decode(),
    }
    return entry, theirs_private


def _answer(code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"responseCode": code, "responseMessage": message, **extra}, status=int(code[:3]))


class AcquirerSimulator:
    def __init__(self, entry: dict[str, str], private_pem: bytes, merchant_url: str = "",
                 *, base_path: str = "/snap") -> None:
        self.entry = entry
        self.private_key = load_private_key(private_pem)
        self.merchant_public_key = load_private_key(entry["private_key_pem"]).public_key()
        self.merchant_url = merchant_url.rstrip("/")
        self.base_path = base_path.rstrip("/")
        self.qrs: dict[str, SimQr] = {}
        self.tokens: set[str] = set()
        self._notify_token: tuple[str, float] | None = None
        """The merchant's token for our notifies and when (monotonic) to stop using it."""
        self.generate_calls: list[str] = []
        """Every generate call's partnerReferenceNo, failed ones included."""
        self.refund_calls: list[str] = []
        self._fail_generate = 0
        self._slow_refunds = 0
        self.slow_s = 30.0
        self._late: set[asyncio.Task[None]] = set()
        self.late_answers: list[tuple[str, int, dict[str, Any]]] = []
        """(partnerReferenceNo, HTTP status, body) of the merchant's answers to notifies sent late
        (``pay(late_s=...)``), in order."""

    # --- controls -------------------------------------------------------------------------

    def fail_generate(self, count: int) -> None:
        self._fail_generate = count

    def time_out_refunds(self, count: int, slow_s: float = 30.0) -> None:
        self._slow_refunds, self.slow_s = count, slow_s

    def mark_paid(self, partner_reference_no: str) -> SimQr:
        qr = self.qrs[partner_reference_no]
        if qr.status != "00":
            qr.status, qr.paid_time = "00", format_snap_timestamp()
            qr.rrn = f"{secrets.randbelow(10**12):012d}"
        return qr

    async def pay(self, partner_reference_no: str, *, notify: bool = True, times: int = 1,
                  amount: int | None = None, late_s: float = 0.0) -> list[tuple[int, dict[str, Any]]]:
        """The payer pays the QR; the merchant is notified ``times`` times (none unless ``notify``),
        reporting ``amount`` instead of the QR's when given. With ``late_s`` the notifies go out that
        many seconds later, in the background (their answers land in ``late_answers``): [] now."""
        self.mark_paid(partner_reference_no)
        count = times if notify else 0
        if late_s > 0 and count:
            task = asyncio.create_task(self._notify_late(partner_reference_no, late_s, count, amount))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            return []
        answers = []
        for _ in range(count):
            answers.append(await self.notify(partner_reference_no, amount=amount))
        return answers

    async def _notify_late(self, partner_reference_no: str, late_s: float, times: int, amount: int | None) -> None:
        await asyncio.sleep(late_s)
        for _ in range(times):
            try:
                status, body = await self.notify(partner_reference_no, amount=amount)
            except (aiohttp.ClientError, RuntimeError, ValueError) as exc:  # the merchant is down: as a real one
                status, body = 0, {"error": str(exc)}
            self.late_answers.append((partner_reference_no, status, body))

    def settlement(self) -> list[dict[str, Any]]:
        """The acquirer's settlement list: every paid QR (``referenceNo``, ``rrn``, amount, paid time)
        and every refund made (``type`` ``refund``, ``refundNo``), as ``reconcile --acquirer`` reads it."""
        lines: list[dict[str, Any]] = []
        for qr in self.qrs.values():
            if qr.paid_time is None:
                continue
            lines.append({"type": "payment", "referenceNo": qr.reference_no, "rrn": qr.rrn,
                          "partnerReferenceNo": qr.partner_reference_no, "amount": f"{qr.amount}.00",
                          "time": qr.paid_time})
            for refund in qr.refunds.values():
                lines.append({"type": "refund", "referenceNo": qr.reference_no, "refundNo": refund["refundNo"],
                              "partnerRefundNo": refund["partnerRefundNo"],
                              "amount": refund["refundAmount"]["value"], "time": refund["refundTime"]})
        return lines

    async def notify(self, partner_reference_no: str, *, status: str | None = None, amount: int | None = None,
                     reference_no: str | None = None, bad_signature: bool = False,
                     drop_field: str | None = None) -> tuple[int, dict[str, Any]]:
        qr = self.qrs.get(partner_reference_no)
        body: dict[str, Any] = {
            "originalReferenceNo": reference_no or (qr.reference_no if qr else "999999999999"),
            "originalPartnerReferenceNo": partner_reference_no,
            "latestTransactionStatus": status or (qr.status if qr else "00"),
            "transactionStatusDesc": "Success" if (status or (qr.status if qr else "00")) == "00" else "Pending",
            "amount": {"value": f"{amount if amount is not None else (qr.amount if qr else 1)}.00", "currency": "IDR"},
            "additionalInfo": {"rrn": qr.rrn if qr and qr.rrn else f"{secrets.randbelow(10**12):012d}",
                               "issuer": "SIMBANK"},
        }
        if drop_field:
            body.pop(drop_field, None)
        raw = json.dumps(body, separators=(",", ":")).encode()
        async with aiohttp.ClientSession() as session:
            for fresh in (False, True):
                token = await self._merchant_token(session, fresh=fresh)
                ts = format_snap_timestamp()
                path = urlsplit(self.merchant_url + QR_NOTIFY_PATH).path
                secret = self.entry["notify_client_secret"] + ("x" if bad_signature else "")
                headers = {"Authorization": f"Bearer {token}", "X-TIMESTAMP": ts,
                           "X-PARTNER-ID": self.entry["notify_client_id"],
                           "X-EXTERNAL-ID": str(secrets.randbelow(10**18)), "CHANNEL-ID": self.entry["channel_id"],
                           "X-SIGNATURE": sign_transaction(secret, "POST", path, token, raw, ts),
                           "Content-Type": "application/json"}
                async with session.post(self.merchant_url + QR_NOTIFY_PATH, data=raw, headers=headers) as resp:
                    http_status, answer = resp.status, await resp.json(content_type=None)
                if fresh or answer.get("responseCode") != INVALID_TOKEN:
                    break
                # the merchant no longer knows the kept token (restarted on a fresh database): once more
            return http_status, answer

    async def _merchant_token(self, session: aiohttp.ClientSession, *, fresh: bool = False) -> str:
        """The merchant's access token, kept until shortly before it expires (as an acquirer does:
        one token request per ``expiresIn``, not one per notify); ``fresh`` asks for a new one."""
        kept = self._notify_token
        if not fresh and kept is not None and time.monotonic() < kept[1]:
            return kept[0]
        token, expires_in_s = await self._request_merchant_token(session)
        self._notify_token = (token, time.monotonic() + max(0.0, expires_in_s - TOKEN_MARGIN_S))
        return token

    async def _request_merchant_token(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        ts = format_snap_timestamp()
        client = self.entry["notify_client_id"]
        headers = {"X-CLIENT-KEY": client, "X-TIMESTAMP": ts,
                   "X-SIGNATURE": sign_access_token(self.private_key, client, ts), "Content-Type": "application/json"}
        async with session.post(self.merchant_url + TOKEN_PATH, data=b'{"grantType":"client_credentials"}',
                                headers=headers) as resp:
            body = await resp.json(content_type=None)
        if body.get("responseCode") != "2007300":
            raise RuntimeError(f"merchant refused our token request: {body}")
        return str(body["accessToken"]), float(body.get("expiresIn") or 0)

    # --- the acquirer's SNAP side ---------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        client, ts = request.headers.get("X-CLIENT-KEY", ""), request.headers.get("X-TIMESTAMP", "")
        if client != self.entry["client_id"] or not verify_access_token_signature(
                self.merchant_public_key, client, ts, request.headers.get("X-SIGNATURE", "")):
            return _answer("4017300", "Unauthorized. Signature")
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return _answer("2007300", "Successful", accessToken=token, tokenType="Bearer", expiresIn="900")

    async def _authenticated(self, request: web.Request, service: str) -> tuple[dict[str, Any] | None,
                                                                                web.Response | None]:
        raw = await request.read()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.tokens:
            return None, _answer(f"401{service}01", "Invalid Token (B2B)")
        if request.headers.get("X-PARTNER-ID") != self.entry["partner_id"] or not verify_transaction_signature(
                self.entry["client_secret"], "POST", request.path, token, raw, request.headers.get("X-TIMESTAMP", ""),
                request.headers.get("X-SIGNATURE", "")):
            return None, _answer(f"401{service}00", "Unauthorized. Signature")
        try:
            body = json.loads(raw)
        except ValueError:
            return None, _answer(f"400{service}01", "Invalid Field Format {body}")
        return body, None

    async def _generate(self, request: web.Request) -> web.Response:
        body, refusal = await self._authenticated(request, "47")
        if refusal is not None or body is None:
            return refusal or _answer("4004701", "Invalid Field Format")
        prn = str(body.get("partnerReferenceNo") or "")
        if not prn or "amount" not in body:
            return _answer("4004702", "Invalid Mandatory Field {partnerReferenceNo}")
        self.generate_calls.append(prn)
        if self._fail_generate > 0:
            self._fail_generate -= 1
            return _answer("5004700", "General Error")
        if prn in self.qrs:
            return _answer("4094701", "Duplicate partnerReferenceNo")
        amount = int(str(body["amount"]["value"]).split(".")[0])
        reference_no = f"{secrets.randbelow(10**12):012d}"
        qr = SimQr(prn, reference_no, amount, dynamic_qris(
            nmid=self.entry["merchant_id"], merchant_name="E-METERAI", city="JAKARTA", amount=amount,
            bill_number=prn[:25], reference_label=reference_no))
        self.qrs[prn] = qr
        return _answer("2004700", "Successful", referenceNo=reference_no, partnerReferenceNo=prn,
                       qrContent=qr.qr_content)

    def _find(self, body: dict[str, Any]) -> SimQr | None:
        return self.qrs.get(str(body.get("originalPartnerReferenceNo") or ""))

    async def _query(self, request: web.Request) -> web.Response:
        body, refusal = await self._authenticated(request, "51")
        if refusal is not None or body is None:
            return refusal or _answer("4005101", "Invalid Field Format")
        qr = self._find(body)
        if qr is None:
            return _answer("4045101", "Transaction Not Found")
        return _answer("2005100", "Successful", originalReferenceNo=qr.reference_no,
                       originalPartnerReferenceNo=qr.partner_reference_no, serviceCode="47",
                       latestTransactionStatus=qr.status, qrContent=qr.qr_content,
                       amount={"value": f"{qr.amount}.00", "currency": "IDR"}, paidTime=qr.paid_time,
                       additionalInfo={"rrn": qr.rrn} if qr.rrn else {})

    async def _cancel(self, request: web.Request) -> web.Response:
        body, refusal = await self._authenticated(request, "77")
        if refusal is not None or body is None:
            return refusal or _answer("4007701", "Invalid Field Format")
        qr = self._find(body)
        if qr is None:
            return _answer("4047701", "Transaction Not Found")
        if qr.status == "00":
            return _answer("4037700", "Transaction already paid", latestTransactionStatus="00")
        qr.status = "05"
        return _answer("2007700", "Successful", originalReferenceNo=qr.reference_no,
                       originalPartnerReferenceNo=qr.partner_reference_no, cancelTime=format_snap_timestamp())

    async def _refund(self, request: web.Request) -> web.Response:
        body, refusal = await self._authenticated(request, "78")
        if refusal is not None or body is None:
            return refusal or _answer("4007801", "Invalid Field Format")
        qr, refund_no = self._find(body), str(body.get("partnerRefundNo") or "")
        if qr is None:
            return _answer("4047801", "Transaction Not Found")
        if not refund_no:
            return _answer("4007802", "Invalid Mandatory Field {partnerRefundNo}")
        self.refund_calls.append(refund_no)
        if refund_no not in qr.refunds:
            if qr.status not in ("00", "04"):
                return _answer("4037800", "Transaction not paid")
            try:
                amount = int(str(body["refundAmount"]["value"]).split(".")[0])
            except (KeyError, TypeError, ValueError):
                return _answer("4007801", "Invalid Field Format {refundAmount}")
            refunded = sum(int(str(r["refundAmount"]["value"]).split(".")[0]) for r in qr.refunds.values())
            if amount <= 0 or refunded + amount > qr.amount:  # partial refunds up to the amount paid
                return _answer("4047813", "Invalid Amount")
            qr.refunds[refund_no] = {"refundNo": f"{secrets.randbelow(10**12):012d}",
                                     "partnerRefundNo": refund_no, "refundAmount": body.get("refundAmount"),
                                     "refundTime": format_snap_timestamp()}
            qr.status = "04"
        if self._slow_refunds > 0:  # done, but the answer comes too late for the caller
            self._slow_refunds -= 1
            await asyncio.sleep(self.slow_s)
        return _answer("2007800", "Successful", originalReferenceNo=qr.reference_no,
                       originalPartnerReferenceNo=qr.partner_reference_no, **qr.refunds[refund_no])

    # --- controls over HTTP -----------------------------------------------------------------

    async def _sim_pay(self, request: web.Request) -> web.Response:
        """``{"partnerReferenceNo" | "qr_content", "notify"?: true, "times"?: 1, "amount"?: rupiah,
        "late_s"?: seconds}``: pay, and notify (or not; several times; reporting another amount; late)."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
            times, late_s = int(body.get("times", 1)), float(body.get("late_s", 0))
            amount = None if body.get("amount") is None else int(body["amount"])
            if not 0 <= times <= 10 or not 0 <= late_s <= 3600:
                raise ValueError("times must be 0..10, late_s 0..3600")
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        prn = str(body.get("partnerReferenceNo", ""))
        if not prn and body.get("qr_content"):  # the web app's development pay control knows the QR only
            prn = next((p for p, qr in self.qrs.items() if qr.qr_content == body["qr_content"]), "")
        if prn not in self.qrs:
            return web.json_response({"error": "unknown partnerReferenceNo"}, status=404)
        notify = bool(body.get("notify", True))
        answers = await self.pay(prn, notify=notify, times=times, amount=amount, late_s=late_s)
        late = {"notify_in_s": late_s} if late_s > 0 and notify and times else {}
        return web.json_response({"notified": [b for _, b in answers], **late})

    async def _sim_settlement(self, request: web.Request) -> web.Response:
        """The settlement list: JSON, or CSV with ``?format=csv``."""
        lines = self.settlement()
        if request.query.get("format") == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, SETTLEMENT_FIELDS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(lines)
            return web.Response(text=out.getvalue(), content_type="text/csv")
        return web.json_response(lines)

    async def _sim_status(self, _: web.Request) -> web.Response:
        """Whether a simulated acquirer is there (the web app shows its development pay control then)."""
        return web.json_response({"acquirer": True, "qrs": len(self.qrs)})

    async def _sim_fail_generate(self, request: web.Request) -> web.Response:
        self.fail_generate(int((await request.json()).get("count", 1)))
        return web.json_response({"ok": True})

    async def _sim_time_out_refunds(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.time_out_refunds(int(body.get("count", 1)), float(body.get("slow_s", 30.0)))
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        application = web.Application()
        base = self.base_path
        application.add_routes([
            web.post(f"{base}/v1.0/access-token/b2b", self._token),
            web.post(f"{base}/v1.0/qr/qr-mpm-generate", self._generate),
            web.post(f"{base}/v1.0/qr/qr-mpm-query", self._query),
            web.post(f"{base}/v1.0/qr/qr-mpm-cancel", self._cancel),
            web.post(f"{base}/v1.0/qr/qr-mpm-refund", self._refund),
            web.get("/sim/", self._sim_status),
            web.post("/sim/pay", self._sim_pay),
            web.post("/sim/fail-generate", self._sim_fail_generate),
            web.post("/sim/time-out-refunds", self._sim_time_out_refunds),
            web.get("/sim/settlement", self._sim_settlement),
        ])
        return application

    async def _stop_late(self, _: web.Application) -> None:
        """Notifies still waiting to be sent late are dropped with the server."""
        for task in list(self._late):
            task.cancel()
        await asyncio.gather(*self._late, return_exceptions=True)

    async def start(self, port: int, host: str = "127.0.0.1") -> web.AppRunner:
        application = self.app()
        application.on_cleanup.append(self._stop_late)
        runner = web.AppRunner(application, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        return runner




SETTLEMENT_FIELDS = ("type", "referenceNo", "rrn", "partnerReferenceNo", "refundNo", "partnerRefundNo", "amount",
                     "time")
"""The columns of the settlement list as CSV (``GET /sim/settlement?format=csv``)."""

INVALID_TOKEN = Case.INVALID_TOKEN.code(Service.QR_NOTIFY)
"""The merchant's answer to a notify whose token it does not know (``4015201``)."""
TOKEN_MARGIN_S = 60.0
"""A kept token is replaced this long before the merchant said it expires."""
ACQUIRER_FILE = "acquirer.json"
ACQUIRER_KEY_FILE = "acquirer_private_key.pem"
DEV_ACQUIRER_PORT = 8090


def add_dev_acquirer(partners_file: Path, port: int = DEV_ACQUIRER_PORT) -> bool:
    """Give a development partners file (the one ``dev-bank`` made, its keys beside it) a development
    acquirer played by this simulator on ``port``, unless it names acquirers already. The entry and
    the simulator's private key are kept beside the file (``acquirer.json``,
    ``acquirer_private_key.pem``). False when nothing was added."""
    keys = partners_file.parent
    if not partners_file.exists() or not (keys / BANK_FILE).exists():
        return False
    with locked(partners_file.with_name(f".{partners_file.name}.lock")):
        partners = json.loads(partners_file.read_text())
        if "acquirers" in partners:
            return False
        entry, private_pem = new_acquirer_entry(f"http://127.0.0.1:{port}/snap", acquirer_id="dev-acquirer")
        write_atomic(keys / ACQUIRER_FILE, (json.dumps(entry, indent=2) + "\n").encode(), mode=0o600)
        write_atomic(keys / ACQUIRER_KEY_FILE, private_pem, mode=0o600)
        partners["acquirers"] = [entry]
        write_atomic(partners_file, (json.dumps(partners, indent=2) + "\n").encode(), mode=0o600)
    return True


async def serve(directory: Path, merchant_url: str, port: int) -> int:
    """Play the acquirer kept in ``directory`` on 127.0.0.1:``port`` until SIGINT/SIGTERM. Without
    one (the platform runs against a real acquirer) it idles, so a supervisor keeps the others up."""
    runner: web.AppRunner | None = None
    try:
        entry = json.loads((directory / ACQUIRER_FILE).read_text())
        private_pem = (directory / ACQUIRER_KEY_FILE).read_bytes()
    except (OSError, ValueError):
        print(f"no development QRIS acquirer in {directory}: nothing to play", flush=True)
    else:
        runner = await AcquirerSimulator(entry, private_pem, merchant_url).start(port)
        print(f"development QRIS acquirer {entry['acquirer_id']} on http://127.0.0.1:{port}/snap "
              f"(pay: POST /sim/pay {{\"partnerReferenceNo\"}})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if runner is not None:
        await runner.cleanup()
    return 0
