"""The stamping worker, download and verification against the real servers.

The session's worker consumes jobs; each test here also runs the outbox relay, so that the jobs
its uploads queue reach the worker as they would in production.

* a multi-page PDF is stamped once: the download passes pyHanko's own validation (intact, trusted
  with the development root, the serial in the reason), its stamp is USED, one
  stamping.document_stamped.v1 carries the download's SHA-256;
* a job queued again after it is DONE changes nothing (the same document, one message);
* ``POST /v1/verify``: the stamped file is valid; a changed byte is not intact; an unstamped file,
  a stamp signed by a foreign key and a serial the registry does not know are not valid;
* a document that cannot be stamped fails the job and gives its serial back; a job whose signing
  keeps timing out (signing hangs: failpoint ``stamping.sign=hang``) fails after ``max_attempts``
  and gives its serial back;
* 100 concurrent uploads with 100 serials: 100 distinct serials, all stamped; the 101st: no_quota.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from emeterai_shared.auth import partner_account_id
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.documents import sample_pdf
from emeterai_testkit.fixtures import eventually, running
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import SignatureCoverageLevel, async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from stamping_service.adapters.documents import Kind, PostgresDocumentStore
from stamping_service.adapters.pdf.signer import DEV_ROOT, dev_signing_chain
from stamping_service.adapters.pdf.stamp import stamp_pdf
from stamping_service.adapters.pdfpool import PdfPool, PdfTimeout
from stamping_service.adapters.stampings import StampingRepository
from stamping_service.bootstrap import SERVICE
from stamping_service.domain.contracts import StampingJobQueued
from stamping_service.domain.stamping import NewStamping
from stamping_service.entrypoints.messages import ON_JOB_QUEUED
from stamping_service.service_layer.stamper import Stamper

if TYPE_CHECKING:
    from conftest import Stamping

DOCUMENT = sample_pdf(3)
STORE = PostgresDocumentStore()


@pytest.fixture
async def relaying(stamping: Stamping) -> AsyncIterator[None]:
    async with running(SERVICE, stamping.settings, worker=False, relay=True):
        yield


def bearer(stamping: Stamping, account: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {stamping.issuer.issue(account)}"}


async def job(stamping: Stamping, account: uuid.UUID, stamping_id: str) -> dict[str, Any]:
    async with stamping.http.get(f"{stamping.base_url}/v1/stampings/{stamping_id}",
                                 headers=bearer(stamping, account)) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def finished(stamping: Stamping, account: uuid.UUID, stamping_id: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        body = await job(stamping, account, stamping_id)
        return body if body["status"] in ("DONE", "FAILED") else None

    result: dict[str, Any] = await eventually(ended, timeout_s=60, message=f"stamping {stamping_id} to end")
    return result


async def download(stamping: Stamping, account: uuid.UUID, stamping_id: str,
                   headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with stamping.http.get(f"{stamping.base_url}/v1/stampings/{stamping_id}/document",
                                 headers={**bearer(stamping, account), **(headers or {})}) as resp:
        return resp.status, await resp.read(), resp.headers


async def verify(stamping: Stamping, data: bytes) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="stamped.pdf", content_type="application/pdf")
    async with stamping.http.post(stamping.base_url + "/v1/verify", data=form) as resp:
        return resp.status, await resp.json()


async def stamped_messages(stamping: Stamping, stamping_id: str) -> list[dict[str, Any]]:
    rows = await stamping.pool.fetch(
        "SELECT body FROM outbox WHERE message_type = 'stamping.document_stamped.v1' AND correlation_id = $1",
        stamping_id)
    return [json.loads(bytes(r["body"])) for r in rows]


def dev_root(stamping: Stamping) -> bytes:
    return (Path(stamping.settings.signing_dev_dir) / DEV_ROOT).read_bytes()


async def test_a_multi_page_document_is_stamped_once_and_validates(stamping: Stamping, relaying: None) -> None:
    account = uuid.uuid4()
    event = stamping.issued(account, 2)
    await stamping.send(event)
    sn, other = sorted(s.sn for s in event.serials)  # the oldest issuance first, then by serial

    status, body = await stamping.upload(account, DOCUMENT, page=2, x=400, y=60, reason="Lamaran CASN")
    assert status == 202, body
    sid = body["stamping_id"]
    done = await finished(stamping, account, sid)
    assert (done["status"], done["sn"], done["error"]) == ("DONE", sn, None)

    status, pdf, headers = await download(stamping, account, sid)
    assert status == 200 and headers["Content-Type"] == "application/pdf"
    sha256 = hashlib.sha256(pdf).hexdigest()
    assert done["document_sha256"] == sha256 and headers["ETag"] == f'"{sha256}"'
    assert pdf.startswith(DOCUMENT), "the stamp is an incremental update: the original bytes come first"
    status, _, _ = await download(stamping, account, sid, {"If-None-Match": f'"{sha256}"'})
    assert status == 304
    status, _, _ = await download(stamping, uuid.uuid4(), sid)
    assert status == 404

    # pyHanko's own validation, trusting only our development root
    reader = PdfFileReader(io.BytesIO(pdf))
    [signature] = reader.embedded_signatures
    context = ValidationContext(trust_roots=[_load_root(dev_root(stamping))])
    result = await async_validate_pdf_signature(signature, context)
    assert result.intact and result.valid and result.trusted and result.bottom_line
    assert result.coverage == SignatureCoverageLevel.ENTIRE_FILE
    assert str(signature.sig_object["/Reason"]) == f"[{sn}] Lamaran CASN"
    assert len(reader.root["/Pages"]["/Kids"]) == 3
    annotations = reader.root["/Pages"]["/Kids"][1].get_object()["/Annots"]
    assert any(a.get_object().get("/T") == f"Meterai-{sn}" for a in annotations)

    assert {row[0]: row[4] for row in await stamping.rows(account)} == {sn: "USED", other: "UNUSED"}
    quota = await stamping.quota(account)
    assert (quota["available"], quota["used"]) == (1, 1)
    [message] = await stamped_messages(stamping, sid)
    assert (message["sn"], message["document_sha256"], message["account_id"]) == (sn, sha256, str(account))
    assert await STORE.get(stamping.pool, uuid.UUID(sid), Kind.ORIGINAL) is None  # type: ignore[arg-type]

    # queued again (a lost message re-queued, a redelivery): nothing changes
    for _ in range(2):  # each applied (in the inbox) before looking: no sleep racing the worker
        mid = await stamping.publish(StampingJobQueued(stamping_id=uuid.UUID(sid), account_id=account, sn=sn))
        await stamping.applied(ON_JOB_QUEUED, mid)
    assert (await job(stamping, account, sid))["document_sha256"] == sha256
    assert (await download(stamping, account, sid))[1] == pdf
    assert len(await stamped_messages(stamping, sid)) == 1


def _load_root(pem: bytes) -> Any:
    from pyhanko.keys import load_certs_from_pemder_data

    [root] = load_certs_from_pemder_data(pem)
    return root


async def test_verify_reports_each_stamp(stamping: Stamping, relaying: None, tmp_path: Path) -> None:
    account = uuid.uuid4()
    event = stamping.issued(account, 1)
    await stamping.send(event)
    sn = event.serials[0].sn
    status, body = await stamping.upload(account, DOCUMENT)
    assert status == 202, body
    await finished(stamping, account, body["stamping_id"])
    _, pdf, _ = await download(stamping, account, body["stamping_id"])

    status, result = await verify(stamping, pdf)
    assert status == 200, result
    assert result["valid"] is True and result["other_signatures"] == 0
    [stamp] = result["stamps"]
    assert (stamp["sn"], stamp["status"], stamp["intact"], stamp["trusted"]) == (sn, "STAMPED", True, True)
    assert stamp["signed_at"]

    # one byte changed inside the signed range: not intact, not valid
    at = len(DOCUMENT) // 2
    flipped = pdf[:at] + bytes([pdf[at] ^ 0x01]) + pdf[at + 1:]
    status, result = await verify(stamping, flipped)
    assert status == 200 and result["valid"] is False
    assert [(s["sn"], s["intact"]) for s in result["stamps"]] == [(sn, False)]

    # no stamp at all
    status, result = await verify(stamping, DOCUMENT)
    assert (status, result["valid"], result["stamps"]) == (200, False, [])

    # a look-alike stamp signed with somebody else's key, reusing a real serial
    foreign, _root = dev_signing_chain(tmp_path / "foreign")
    forged = await asyncio.to_thread(stamp_pdf, DOCUMENT, password=None, page=1, x=72, y=72, size=100, sn=sn,
                                     token="forged", reason="Dokumen", signer=foreign)
    status, result = await verify(stamping, forged)
    assert status == 200 and result["valid"] is False
    [stamp] = result["stamps"]
    assert (stamp["intact"], stamp["trusted"]) == (True, False)

    # our key, but a serial the registry never issued (a signature made outside the platform)
    signer, _ = dev_signing_chain(stamping.settings.signing_dev_dir)
    unknown = await asyncio.to_thread(stamp_pdf, DOCUMENT, password=None, page=1, x=72, y=72, size=100,
                                      sn="Z" * 22, token="t", reason="Dokumen", signer=signer)
    status, result = await verify(stamping, unknown)
    assert status == 200 and result["valid"] is False
    assert [(s["status"], s["intact"], s["trusted"]) for s in result["stamps"]] == [("UNKNOWN", True, True)]

    for data, code in ((b"PK\x03\x04" + bytes(64), "not_a_pdf"),):
        status, result = await verify(stamping, data)
        assert (status, result["error"]["code"]) == (422, code)
    async with stamping.http.post(stamping.base_url + "/v1/verify", data=b"{}",
                                  headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 415


async def _queue_directly(stamping: Stamping, account: uuid.UUID, data: bytes) -> tuple[uuid.UUID, str]:
    """A job whose stored original is ``data``, as if it had passed upload validation."""
    stamping_id = uuid.uuid4()
    async with unit_of_work(stamping.pool) as uow:
        repo = StampingRepository(uow.conn)
        sn = await repo.reserve(account, None)
        assert sn is not None
        await repo.insert(NewStamping(id=stamping_id, account_id=account, sn=sn, page=1, x=72, y=72, size=100,
                                      reason="Dokumen", password=None,
                                      document_sha256=hashlib.sha256(data).hexdigest()))
        await STORE.put(uow.conn, stamping_id, Kind.ORIGINAL, data)
    return stamping_id, sn


async def test_a_document_that_cannot_be_stamped_fails_and_gives_its_serial_back(stamping: Stamping) -> None:
    account = uuid.uuid4()
    await stamping.send(stamping.issued(account, 1))
    stamping_id, sn = await _queue_directly(stamping, account, b"%PDF-1.7\nnot really a PDF")
    await stamping.publish(StampingJobQueued(stamping_id=stamping_id, account_id=account, sn=sn))

    failed = await finished(stamping, account, str(stamping_id))
    assert failed["status"] == "FAILED" and "cannot be stamped" in failed["error"]
    assert (await stamping.quota(account))["serials_available"] == [sn]
    assert await stamped_messages(stamping, str(stamping_id)) == []
    status, body, _ = await download(stamping, account, str(stamping_id))
    assert (status, json.loads(body)["error"]["code"]) == (409, "stamping_failed")
    # the serial stamps another document
    status, body = await stamping.upload(account, DOCUMENT, key=str(uuid.uuid4()))
    assert status == 202 and (await job(stamping, account, body["stamping_id"]))["sn"] == sn


async def test_signing_that_keeps_timing_out_fails_after_the_last_attempt(stamping: Stamping) -> None:
    account = uuid.uuid4()
    await stamping.send(stamping.issued(account, 1))
    stamping_id, sn = await _queue_directly(stamping, account, DOCUMENT)
    settings = stamping.settings.model_copy(update={"sign_timeout_s": 0.2, "retry_delays_ms": [10, 10]})
    # signing never returns (not merely slow): every attempt times out, however fast the machine
    pdf = PdfPool(settings.signing(), workers=1, failpoint_spec="stamping.sign=hang")
    stamper = Stamper(stamping.pool, pdf, STORE, settings)
    try:
        for _ in range(settings.max_attempts - 1):
            with pytest.raises(PdfTimeout):
                async with unit_of_work(stamping.pool) as uow:
                    await stamper.stamp(uow, stamping_id)
            row = await stamping.pool.fetchrow("SELECT status FROM stampings WHERE id = $1", stamping_id)
            assert row["status"] == "STAMPING"
            assert (await stamping.quota(account))["available"] == 0
        async with unit_of_work(stamping.pool) as uow:
            await stamper.stamp(uow, stamping_id)
    finally:
        pdf.close()
    row = await stamping.pool.fetchrow("SELECT status, attempts, error FROM stampings WHERE id = $1", stamping_id)
    assert (row["status"], row["attempts"]) == ("FAILED", settings.max_attempts)
    assert "gave up after" in row["error"]
    assert (await stamping.quota(account))["serials_available"] == [sn]


async def test_a_hundred_concurrent_uploads_are_all_stamped_with_distinct_serials(
        stamping: Stamping, relaying: None) -> None:
    account, n = uuid.uuid4(), 100
    event = stamping.issued(account, n)
    await stamping.send(event)
    results = await asyncio.gather(*(stamping.upload(account, DOCUMENT) for _ in range(n)))
    assert [status for status, _ in results] == [202] * n, [b for s, b in results if s != 202][:3]
    status, body = await stamping.upload(account, DOCUMENT)
    assert (status, body["error"]["code"]) == (409, "no_quota")

    ended = [await finished(stamping, account, body["stamping_id"]) for _, body in results]
    assert {e["status"] for e in ended} == {"DONE"}
    assert sorted(e["sn"] for e in ended) == sorted(s.sn for s in event.serials)
    assert len({e["document_sha256"] for e in ended}) == n
    quota = await stamping.quota(account)
    assert (quota["available"], quota["used"]) == (0, n)


async def test_a_partner_system_stamps_with_its_api_key(stamping: Stamping, relaying: None) -> None:
    [configured] = json.loads(Path(stamping.settings.partners_file).read_text())["partners"]
    account = partner_account_id(configured["partner_id"])
    event = stamping.issued(account, 1)
    await stamping.send(event)
    partner = {"X-Api-Key": configured["api_key"]}
    async with stamping.http.get(stamping.base_url + "/v1/quota", headers=partner) as resp:
        assert resp.status == 200 and (await resp.json())["available"] >= 1

    form = aiohttp.FormData()
    form.add_field("file", DOCUMENT, filename="lamaran.pdf", content_type="application/pdf")
    for name, value in {"x": 72, "y": 72, "sn": event.serials[0].sn}.items():
        form.add_field(name, str(value))
    async with stamping.http.post(stamping.base_url + "/v1/stampings", data=form,
                                  headers={**partner, "Idempotency-Key": str(uuid.uuid4())}) as resp:
        assert resp.status == 202, await resp.text()
        sid = (await resp.json())["stamping_id"]

    async def done() -> bool:
        async with stamping.http.get(f"{stamping.base_url}/v1/stampings/{sid}", headers=partner) as r:
            return bool((await r.json())["status"] == "DONE")

    await eventually(done, timeout_s=60, message="the partner's stamping")
    async with stamping.http.get(f"{stamping.base_url}/v1/stampings/{sid}/document", headers=partner) as resp:
        assert resp.status == 200 and (await resp.read()).startswith(DOCUMENT)
    status, _, _ = await download(stamping, uuid.uuid4(), sid)  # a buyer does not see it
    assert status == 404
    async with stamping.http.get(stamping.base_url + "/v1/quota", headers={"X-Api-Key": "not-a-key-0123456789"}) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (401, "invalid_api_key")
