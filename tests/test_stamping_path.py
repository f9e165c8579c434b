"""Bought stamps become stamped documents: order → payment → minting → stamping → minting's registry,
through real processes of all four services.

* A buyer's two paid stamps show in the stamping quota; a generated three-page PDF stamped on page
  2 passes pyHanko's own validation trusting nothing but the root of the chain minting publishes
  at ``GET /v1/keys`` (the ``pdf-signature`` key's ``x5c``); the registry shows the serial STAMPED
  with the SHA-256 of the download; ``POST /v1/verify`` accepts it, and not once a byte changed.
* A partner's stamped serial reaches the partner's event feed as ``stamping.completed``.
* The stamping worker SIGKILLed after signing, before its commit: the job stays unfinished with its
  serial held, and once the worker is back it completes with the serial given at upload, once.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from asn1crypto import x509
from emeterai_testkit.clients import Buyer
from emeterai_testkit.documents import sample_pdf
from emeterai_testkit.fixtures import eventually, fetchval
from emeterai_testkit.platform import Platform
from payment_service.adapters.banksim import BankSimulator
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import SignatureCoverageLevel, async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]

STOCK = 20
DOCUMENT = sample_pdf(3)
PARTNER_ID, PARTNER_KEY = "casn-e2e", "casn-e2e-api-key-0123456789"
KILL_AFTER_SIGN = {"EMETERAI_FAILPOINTS": "stamping.after_sign=kill"}


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    partners = tmp_path_factory.mktemp("partners") / "partners.json"
    partner = {"partner_id": PARTNER_ID, "api_key": PARTNER_KEY, "max_quantity": 100}
    partners.write_text(json.dumps({"partners": [partner]}))
    async with purchase_platform(stock=STOCK, stamping=True, order_overrides={"partners_file": str(partners)},
                                 stamping_overrides={"partners_file": str(partners), "pdf_workers": 1}) as p:
        yield p


# --- helpers: the public API as buyers, partners and verifiers see it --------------------------------------


async def paid_stamps(platform: Platform, session: aiohttp.ClientSession, bank: BankSimulator,
                      va_customer_no: CustomerNo, buyer: Buyer, quantity: int) -> list[str]:
    """Order ``quantity`` stamps as ``buyer``, pay them at the bank; the serials once FULFILLED."""
    order_id = await buyer.paid_order(quantity, bank, platform.customer_no)
    order = await buyer.status_becomes(order_id, "FULFILLED")
    serials: list[str] = order["serials"]
    assert len(serials) == quantity
    return serials


def bearer(token: str) -> dict[str, str]:
    """A buyer's Authorization header; none for "" (a partner's session carries its X-Api-Key)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


async def quota(platform: Platform, session: aiohttp.ClientSession, token: str) -> dict[str, Any]:
    async with session.get(f"{platform.url('stamping')}/v1/quota", headers=bearer(token)) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def quota_shows(platform: Platform, session: aiohttp.ClientSession, token: str,
                      serials: list[str]) -> dict[str, Any]:
    """The quota once the stamping service has learnt of ``serials`` (minting's event is asynchronous)."""
    async def learnt() -> dict[str, Any] | None:
        q = await quota(platform, session, token)
        return q if set(serials) <= set(q["serials_available"]) else None

    found: dict[str, Any] = await eventually(learnt, timeout_s=60, interval_s=0.2,
                                             message=f"serials {serials} in the stamping quota")
    return found


async def upload(platform: Platform, session: aiohttp.ClientSession, token: str, data: bytes, *,
                 page: int = 1, x: float = 72, y: float = 72, reason: str = "Dokumen") -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="lamaran.pdf", content_type="application/pdf")
    for name, value in (("page", page), ("x", x), ("y", y), ("size", 100), ("reason", reason)):
        form.add_field(name, str(value))
    async with session.post(f"{platform.url('stamping')}/v1/stampings", data=form,
                            headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())}) as r:
        assert r.status == 202, await r.text()
        body: dict[str, Any] = await r.json()
    assert body["status"] == "QUEUED"
    return body


async def job(platform: Platform, session: aiohttp.ClientSession, token: str, stamping_id: str) -> dict[str, Any]:
    async with session.get(f"{platform.url('stamping')}/v1/stampings/{stamping_id}", headers=bearer(token)) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def finished(platform: Platform, session: aiohttp.ClientSession, token: str, stamping_id: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        body = await job(platform, session, token, stamping_id)
        return body if body["status"] in ("DONE", "FAILED") else None

    found: dict[str, Any] = await eventually(ended, timeout_s=60, interval_s=0.2,
                                             message=f"stamping {stamping_id} DONE or FAILED")
    return found


async def download(platform: Platform, session: aiohttp.ClientSession, token: str, stamping_id: str) -> bytes:
    async with session.get(f"{platform.url('stamping')}/v1/stampings/{stamping_id}/document",
                           headers=bearer(token)) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/pdf"
        return await r.read()


async def verify(platform: Platform, session: aiohttp.ClientSession, data: bytes) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="stamped.pdf", content_type="application/pdf")
    async with session.post(f"{platform.url('stamping')}/v1/verify", data=form) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def registry(platform: Platform, session: aiohttp.ClientSession, sn: str) -> dict[str, Any]:
    async with session.get(f"{platform.url('minting')}/v1/stamps/{sn}") as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def registry_stamped(platform: Platform, session: aiohttp.ClientSession, sn: str) -> dict[str, Any]:
    """The registry entry once minting has applied the stamping (polled gently: the registry is
    rate-limited per client address)."""
    async def stamped() -> dict[str, Any] | None:
        stamp = await registry(platform, session, sn)
        return stamp if stamp["status"] == "STAMPED" else None

    found: dict[str, Any] = await eventually(stamped, timeout_s=60, interval_s=0.5,
                                             message=f"serial {sn} STAMPED in minting's registry")
    return found


async def published_chain(platform: Platform, session: aiohttp.ClientSession) -> list[bytes]:
    """The stamping certificate chain (DER) of minting's ``pdf-signature`` key: signing cert first, root last."""
    async with session.get(f"{platform.url('minting')}/v1/keys") as r:
        assert r.status == 200
        keys = (await r.json())["keys"]
    [key] = [k for k in keys if k.get("purpose") == "pdf-signature"]
    return [base64.b64decode(c) for c in key["x5c"]]


async def stamped_messages(platform: Platform, stamping_id: str) -> int:
    count: int = await fetchval(platform.settings["stamping"],
                                "SELECT count(*) FROM outbox WHERE message_type = 'stamping.document_stamped.v1'"
                                " AND correlation_id = $1", stamping_id)
    return count


async def reuse_alerts(platform: Platform, session: aiohttp.ClientSession, sn: str) -> tuple[int, list[str]]:
    """Minting's refused uses of ``sn`` (audit table) and its reuse alert samples (worker metrics)."""
    rows: int = await fetchval(platform.settings["minting"], "SELECT count(*) FROM reuse_attempts WHERE sn = $1", sn)
    async with session.get(f"http://127.0.0.1:{platform.proc('minting', 'worker').port}/metrics") as r:
        assert r.status == 200
        metrics = await r.text()
    samples = [line for line in metrics.splitlines() if line.startswith("emeterai_serial_reuse_total{")
               and not line.rstrip().endswith(" 0.0")]
    return rows, samples


# --- tests -------------------------------------------------------------------------------------------------


async def test_a_bought_stamp_stamps_a_document_that_validates_against_the_published_root(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    async with aiohttp.ClientSession() as session:
        bank = bank_client(platform, session)
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        serials = await paid_stamps(platform, session, bank, va_customer_no, buyer, 2)
        q = await quota_shows(platform, session, buyer.token, serials)
        assert (q["available"], q["used"], sorted(q["serials_available"])) == (2, 0, sorted(serials))

        accepted = await upload(platform, session, buyer.token, DOCUMENT, page=2, x=400, y=60,
                                reason="Lamaran CASN 2024")
        sid = accepted["stamping_id"]
        done = await finished(platform, session, buyer.token, sid)
        assert (done["status"], done["error"]) == ("DONE", None), done
        sn = done["sn"]
        assert sn == q["serials_available"][0], "the oldest unused serial is taken when none is named"
        pdf = await download(platform, session, buyer.token, sid)
        sha256 = hashlib.sha256(pdf).hexdigest()
        assert done["document_sha256"] == sha256
        assert pdf.startswith(DOCUMENT), "the stamp is an incremental update of the uploaded bytes"

        # pyHanko's own validation, trusting only the root minting publishes for PDF signatures
        chain = await published_chain(platform, session)
        assert len(chain) >= 2
        root = x509.Certificate.load(chain[-1])
        assert root.subject == root.issuer, "the last certificate of x5c is the (self-signed) root"
        reader = PdfFileReader(io.BytesIO(pdf))
        [signature] = reader.embedded_signatures
        assert signature.signer_cert.dump() == chain[0], "x5c starts with the certificate that signs the PDFs"
        result = await async_validate_pdf_signature(signature, ValidationContext(trust_roots=[root]))
        assert result.intact and result.valid and result.trusted and result.bottom_line, result.summary()
        assert result.coverage == SignatureCoverageLevel.ENTIRE_FILE
        assert str(signature.sig_object["/Reason"]) == f"[{sn}] Lamaran CASN 2024"
        assert len(reader.root["/Pages"]["/Kids"]) == 3
        # a root that is not ours does not make the signature trusted (the check above means something)
        foreign = await async_validate_pdf_signature(
            PdfFileReader(io.BytesIO(pdf)).embedded_signatures[0], ValidationContext(trust_roots=[]))
        assert foreign.intact and not foreign.trusted

        stamp = await registry_stamped(platform, session, sn)
        assert (stamp["sn"], stamp["document_sha256"], stamp["face_value"]) == (sn, sha256, 10_000)
        assert stamp["stamped_at"]
        [other] = [s for s in serials if s != sn]
        assert (await registry(platform, session, other))["status"] == "UNUSED"
        q = await quota(platform, session, buyer.token)
        assert (q["available"], q["used"], q["serials_available"]) == (1, 1, [other])

        verdict = await verify(platform, session, pdf)
        assert verdict["valid"] is True and verdict["other_signatures"] == 0, verdict
        [checked] = verdict["stamps"]
        assert (checked["sn"], checked["status"], checked["intact"], checked["trusted"]) == (sn, "STAMPED", True, True)
        assert checked["signed_at"]

        # one byte changed inside the signed range (the original page content): not intact, not valid
        start, length = signature.byte_range[0], signature.byte_range[1]
        at = start + length // 2
        flipped = pdf[:at] + bytes([pdf[at] ^ 0x01]) + pdf[at + 1:]
        verdict = await verify(platform, session, flipped)
        assert verdict["valid"] is False, verdict
        assert [(s["sn"], s["intact"]) for s in verdict["stamps"]] == [(sn, False)]
        assert await reuse_alerts(platform, session, sn) == (0, [])
    assert await stamped_messages(platform, sid) == 1


async def test_a_partner_reads_stamping_completed_in_its_event_feed(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    """A partner (the CASN system) buys, stamps and downloads with its ``X-Api-Key`` alone, as the
    contract says partners call every buyer endpoint; ``stamping.completed`` reaches its feed,
    with the download's SHA-256."""
    async with aiohttp.ClientSession() as session, \
            aiohttp.ClientSession(headers={"X-Api-Key": PARTNER_KEY}) as as_partner:
        bank = bank_client(platform, session)
        partner = Buyer(as_partner, platform.url("order"))  # no bearer token: the X-Api-Key authenticates
        [sn] = await paid_stamps(platform, session, bank, va_customer_no, partner, 1)
        await quota_shows(platform, as_partner, "", [sn])
        sid = (await upload(platform, as_partner, "", DOCUMENT))["stamping_id"]
        done = await finished(platform, as_partner, "", sid)
        assert (done["status"], done["sn"]) == ("DONE", sn), done
        sha256 = hashlib.sha256(await download(platform, as_partner, "", sid)).hexdigest()

        async def completed() -> dict[str, Any] | None:
            async with session.get(f"{platform.url('order')}/v1/partner/events?after=0&limit=500",
                                   headers={"X-Api-Key": PARTNER_KEY}) as r:
                assert r.status == 200, await r.text()
                events = (await r.json())["events"]
            found = [e for e in events if e["type"] == "stamping.completed" and e["data"]["sn"] == sn]
            assert len(found) <= 1, found
            return found[0] if found else None

        event = await eventually(completed, timeout_s=60, interval_s=0.3, message=f"stamping.completed for {sn}")
    assert (event["data"]["stamping_id"], event["data"]["document_sha256"]) == (sid, sha256)


async def test_sigkill_of_the_worker_after_signing_completes_the_job_with_the_same_serial_once(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    worker = platform.proc("stamping", "worker")
    async with aiohttp.ClientSession() as session:
        bank = bank_client(platform, session)
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        serials = await paid_stamps(platform, session, bank, va_customer_no, buyer, 2)
        await quota_shows(platform, session, buyer.token, serials)

        await platform.restart("stamping", "worker", extra_env=KILL_AFTER_SIGN)
        sid = (await upload(platform, session, buyer.token, DOCUMENT, page=3, reason="Surat pernyataan"))["stamping_id"]
        given = (await job(platform, session, buyer.token, sid))["sn"]
        assert given in serials
        await eventually(lambda: not worker.alive, timeout_s=60, message="stamping worker killed after signing")
        assert worker.popen is not None and worker.popen.returncode == -9

        # died between the signature and the commit: nothing of the stamping is committed
        pending = await job(platform, session, buyer.token, sid)
        assert (pending["status"], pending["sn"], pending["document_sha256"]) in (
            ("QUEUED", given, None), ("STAMPING", given, None)), pending
        q = await quota(platform, session, buyer.token)
        assert given not in q["serials_available"] and (q["available"], q["used"]) == (1, 0), q
        assert await stamped_messages(platform, sid) == 0
        assert (await registry(platform, session, given))["status"] == "UNUSED"

        await platform.start(("stamping", "worker"))
        done = await finished(platform, session, buyer.token, sid)
        assert (done["status"], done["sn"], done["error"]) == ("DONE", given, None), done
        pdf = await download(platform, session, buyer.token, sid)
        sha256 = hashlib.sha256(pdf).hexdigest()
        assert done["document_sha256"] == sha256
        verdict = await verify(platform, session, pdf)
        assert verdict["valid"] is True and [s["sn"] for s in verdict["stamps"]] == [given], verdict

        stamp = await registry_stamped(platform, session, given)
        assert stamp["document_sha256"] == sha256
        q = await quota(platform, session, buyer.token)
        assert (q["available"], q["used"]) == (1, 1) and given not in q["serials_available"], q
        assert await stamped_messages(platform, sid) == 1
        minting = platform.settings["minting"]
        assert str(await fetchval(minting, "SELECT stamping_id FROM serials WHERE sn = $1", given)) == sid
        assert await fetchval(platform.settings["stamping"], "SELECT attempts FROM stampings WHERE id = $1",
                              uuid.UUID(sid)) == 2
        assert await reuse_alerts(platform, session, given) == (0, [])
