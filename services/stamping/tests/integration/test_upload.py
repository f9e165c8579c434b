"""``POST /v1/stampings`` and ``GET /v1/stampings/{id}`` against the real servers.

* a valid multi-page PDF → 202 QUEUED, its serial RESERVED, one fewer available, one
  stamping.job_queued.v1 in the outbox;
* the same Idempotency-Key: the same file → the same job, one reservation; another file → 422;
* hostile documents → each its own 4xx code, the quota unchanged;
* N serials, N concurrent uploads → N distinct serials; one more → 409 no_quota;
* a serial of another account → 409 sn_unavailable;
* the job is visible to its owner only.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from emeterai_testkit.documents import (
    edited,
    encrypted,
    nested,
    object_stream_bomb,
    pages_sharing_one_content,
    sample_pdf,
    with_stream,
    zero_pages,
)
from pikepdf import Dictionary, Name, String

if TYPE_CHECKING:
    from conftest import Stamping

MiB = 1024 * 1024
GOOD = sample_pdf(3)


def _javascript(pdf: Any) -> None:
    pdf.Root.OpenAction = Dictionary(S=Name.JavaScript, JS=String("app.alert('hi')"))


async def upload(stamping: Stamping, account: uuid.UUID, data: bytes, *, key: str | None = None,
                 **fields: Any) -> tuple[int, Any]:
    return await stamping.upload(account, data, key=key, **fields)


async def get_job(stamping: Stamping, account: uuid.UUID, stamping_id: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {stamping.issuer.issue(account)}"}
    async with stamping.http.get(f"{stamping.base_url}/v1/stampings/{stamping_id}", headers=headers) as resp:
        return resp.status, await resp.json()


async def queued_messages(stamping: Stamping, stamping_id: str) -> int:
    n = await stamping.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE message_type = 'stamping.job_queued.v1' AND correlation_id = $1",
        stamping_id)
    return int(n)


async def test_a_valid_pdf_is_queued_with_a_reserved_serial(stamping: Stamping) -> None:
    account = uuid.uuid4()
    event = stamping.issued(account, 2)
    await stamping.send(event)
    before = await stamping.quota(account)
    oldest = before["serials_available"][0]

    status, body = await upload(stamping, account, GOOD, key="first", page=2, reason="Kontrak")
    assert status == 202, body
    assert body["status"] == "QUEUED"
    sid = body["stamping_id"]
    after = await stamping.quota(account)
    assert after["available"] == before["available"] - 1
    assert oldest not in after["serials_available"]
    statuses = {sn: st for sn, _, _, _, st in await stamping.rows(account)}
    assert statuses[oldest] == "RESERVED"
    assert await queued_messages(stamping, sid) == 1
    row = await stamping.pool.fetchrow(
        """SELECT j.sn, j.status, j.page, j.reason, d.data FROM stampings j
             JOIN documents d ON d.stamping_id = j.id AND d.kind = 'original' WHERE j.id = $1""", uuid.UUID(sid))
    assert (row["sn"], row["status"], row["page"], row["reason"], row["data"]) == \
        (oldest, "QUEUED", 2, "Kontrak", GOOD)

    # the same key and file: the same answer, still one reservation
    status, again = await upload(stamping, account, GOOD, key="first", page=2, reason="Kontrak")
    assert (status, again["stamping_id"]) == (202, sid)
    assert await stamping.quota(account) == after
    assert await queued_messages(stamping, sid) == 1
    # the same key with another file: refused
    status, other = await upload(stamping, account, sample_pdf(2), key="first", page=2, reason="Kontrak")
    assert (status, other["error"]["code"]) == (422, "idempotency_key_reused")
    assert await stamping.quota(account) == after

    status, job = await get_job(stamping, account, sid)
    place = job.pop("queue")  # where it stands among every account's queued jobs (no worker runs here)
    assert place["position"] >= 1 and place["eta_s"] >= 1
    assert (status, job) == (200, {"stamping_id": sid, "status": "QUEUED", "sn": oldest, "error": None,
                                   "document_sha256": None, "stamped_at": None})
    status, job = await get_job(stamping, uuid.uuid4(), sid)
    assert (status, job["error"]["code"]) == (404, "not_found")
    status, job = await get_job(stamping, account, str(uuid.uuid4()))
    assert status == 404


HOSTILE: list[tuple[str, bytes, dict[str, Any], int, str]] = [
    ("not a pdf", b"PK\x03\x04" + bytes(100), {}, 422, "not_a_pdf"),
    ("truncated", GOOD[: len(GOOD) // 2], {}, 422, "unreadable"),
    ("encrypted without password", encrypted("secret"), {}, 422, "encrypted"),
    ("oversized", GOOD + b" " * (4 * MiB), {}, 413, "too_large"),
    ("javascript action", edited(_javascript), {}, 422, "active_content"),
    ("zero pages", zero_pages(), {}, 422, "no_pages"),
    ("decompression bomb", with_stream(zlib.compress(b"\0" * (70 * MiB), 9), "/FlateDecode"), {}, 422,
     "decompression_bomb"),
    ("object stream bomb", object_stream_bomb(b" " * (80 * MiB)), {}, 422, "decompression_bomb"),
    ("thousands of pages", pages_sharing_one_content(3000), {}, 422, "too_many_pages"),
    ("deeply nested objects", nested("array", 200), {}, 422, "too_deeply_nested"),
    ("stamp outside the page", GOOD, {"x": 590, "y": 10}, 422, "stamp_outside_page"),
    ("page out of range", GOOD, {"page": 9}, 422, "page_out_of_range"),
    ("bad field", GOOD, {"x": "left"}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("data", "fields", "status", "code"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
async def test_hostile_uploads_are_refused_and_use_no_stamp(
        stamping: Stamping, data: bytes, fields: dict[str, Any], status: int, code: str) -> None:
    account = uuid.uuid4()
    await stamping.send(stamping.issued(account, 1))
    before = await stamping.quota(account)
    got, body = await upload(stamping, account, data, **fields)
    assert (got, body["error"]["code"]) == (status, code), body
    assert await stamping.quota(account) == before
    assert await stamping.pool.fetchval("SELECT count(*) FROM stampings WHERE account_id = $1", account) == 0


async def test_the_right_password_opens_an_encrypted_pdf(stamping: Stamping) -> None:
    account = uuid.uuid4()
    await stamping.send(stamping.issued(account, 1))
    status, body = await upload(stamping, account, encrypted("secret"), password="secret")
    assert status == 202, body


async def test_concurrent_uploads_get_distinct_serials_then_no_quota(stamping: Stamping) -> None:
    account, n = uuid.uuid4(), 12
    event = stamping.issued(account, n)
    await stamping.send(event)
    results = await asyncio.gather(*(upload(stamping, account, GOOD) for _ in range(n)))
    assert all(status == 202 for status, _ in results), results
    ids = [uuid.UUID(body["stamping_id"]) for _, body in results]
    sns = await stamping.pool.fetch("SELECT sn FROM stampings WHERE id = ANY($1::uuid[])", ids)
    assert sorted(r["sn"] for r in sns) == sorted(s.sn for s in event.serials)
    assert all(st == "RESERVED" for *_, st in await stamping.rows(account))

    status, body = await upload(stamping, account, GOOD)
    assert (status, body["error"]["code"]) == (409, "no_quota")
    assert (await stamping.quota(account))["available"] == 0


async def test_a_given_serial_must_be_an_unused_one_of_the_caller(stamping: Stamping) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    alices, bobs = stamping.issued(alice, 2), stamping.issued(bob, 1)
    await stamping.send(alices)
    await stamping.send(bobs)

    status, body = await upload(stamping, alice, GOOD, sn=bobs.serials[0].sn)
    assert (status, body["error"]["code"]) == (409, "sn_unavailable")
    assert (await stamping.quota(alice))["available"] == 2
    assert (await stamping.quota(bob))["available"] == 1

    chosen = sorted(s.sn for s in alices.serials)[-1]
    status, body = await upload(stamping, alice, GOOD, sn=chosen)
    assert status == 202, body
    status, job = await get_job(stamping, alice, body["stamping_id"])
    assert job["sn"] == chosen
    status, body = await upload(stamping, alice, GOOD, sn=chosen)  # already reserved
    assert (status, body["error"]["code"]) == (409, "sn_unavailable")


async def test_uploads_need_a_token_a_key_and_a_file(stamping: Stamping) -> None:
    account = uuid.uuid4()
    await stamping.send(stamping.issued(account, 1))
    async with stamping.http.post(stamping.base_url + "/v1/stampings", data=b"x") as resp:
        assert resp.status == 401
    headers = {"Authorization": f"Bearer {stamping.issuer.issue(account)}"}
    form = aiohttp.FormData()
    form.add_field("file", GOOD, filename="a.pdf", content_type="application/pdf")
    async with stamping.http.post(stamping.base_url + "/v1/stampings", data=form, headers=headers) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "idempotency_key_required")
    async with stamping.http.post(stamping.base_url + "/v1/stampings", data={"x": "72", "y": "72"},
                                  headers={**headers, "Idempotency-Key": "k"}) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (415, "multipart_required")
    form = aiohttp.FormData()
    form.add_field("x", "72")
    form.add_field("y", "72")
    form.add_field("attachment", b"not the file", filename="notes.txt")  # forces multipart
    async with stamping.http.post(stamping.base_url + "/v1/stampings", data=form,
                                  headers={**headers, "Idempotency-Key": "k"}) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (422, "file_required")
    assert (await stamping.quota(account))["available"] == 1


def _part(headers: bytes, body: bytes = b"x") -> bytes:
    return b"--bnd\r\n" + headers + b"\r\n\r\n" + body + b"\r\n"


MALFORMED_FORMS = {
    "control bytes in a part name": _part(b'Content-Disposition: form-data; name="fi\x01le"; filename="a.pdf"'),
    "control bytes in a part header": _part(b'Content-Disposition: form-data; name="x"\r\nX-\x01: y'),
    "a part header longer than a line may be": _part(b'Content-Disposition: form-data; name="' + b"a" * 70_000
                                                    + b'"'),
    "an unknown transfer encoding": _part(b'Content-Disposition: form-data; name="x"\r\n'
                                          b"Content-Transfer-Encoding: rot13"),
    "no starting boundary": b"not multipart at all",
    "an unterminated part": b'--bnd\r\nContent-Disposition: form-data; name="x"\r\n\r\n72',
    "a nested multipart part": _part(b"Content-Type: multipart/mixed; boundary=zz", b"--zz\r\n\r\nx\r\n--zz--"),
    "a field that is not UTF-8": _part(b'Content-Disposition: form-data; name="reason"', b"\xff\xfe"),
    "a field holding NUL": _part(b'Content-Disposition: form-data; name="reason"', b"Dok\x00umen"),
}


FIELD_LEVEL = {MALFORMED_FORMS[k] for k in ("an unknown transfer encoding", "a field that is not UTF-8",
                                            "a field holding NUL")}


@pytest.mark.parametrize("body", list(MALFORMED_FORMS.values()), ids=list(MALFORMED_FORMS))
async def test_a_malformed_multipart_body_is_400_malformed_form_and_uses_no_stamp(stamping: Stamping,
                                                                                 body: bytes) -> None:
    """Whatever aiohttp's multipart parser raises on the caller's bytes is 400, for uploads and
    verification alike (an InvalidHeader used to escape as 500 internal_error)."""
    account = uuid.uuid4()
    await stamping.send(stamping.issued(account, 1))
    content_type = {"Content-Type": "multipart/form-data; boundary=bnd"}
    headers = {**content_type, "Authorization": f"Bearer {stamping.issuer.issue(account)}",
               "Idempotency-Key": str(uuid.uuid4())}
    raw = body + b"--bnd--\r\n" if body.endswith(b"\r\n") else body
    # /v1/verify reads only `file` (raw bytes): a broken text field is no error of its
    paths = [("/v1/stampings", headers)] + ([] if body in FIELD_LEVEL else [("/v1/verify", content_type)])
    for path, sent in paths:
        async with stamping.http.post(stamping.base_url + path, data=raw, headers=sent) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (400, "malformed_form"), path
    assert (await stamping.quota(account))["available"] == 1


@pytest.mark.parametrize("data", [h[1] for h in HOSTILE if not h[2]], ids=[h[0] for h in HOSTILE if not h[2]])
async def test_hostile_documents_get_an_answer_from_verify_never_a_5xx(stamping: Stamping, data: bytes) -> None:
    """Public verification reads whatever is uploaded: a document it cannot read carries no stamp
    (200 ``valid: false``) or gets a 4xx code; nothing a caller uploads makes it fail."""
    form = aiohttp.FormData()
    form.add_field("file", data, filename="hostile.pdf", content_type="application/pdf")
    async with stamping.http.post(stamping.base_url + "/v1/verify", data=form) as resp:
        body = await resp.json()
        if resp.status == 200:
            assert (body["valid"], body["stamps"]) == (False, []), body
        else:
            assert (resp.status, body["error"]["code"]) in {(413, "too_large"), (422, "not_a_pdf"),
                                                           (422, "unreadable")}, body
