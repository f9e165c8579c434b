"""The public registry and the stamped-document events, against the real servers.

* ``GET /v1/stamps/{sn}``: UNUSED, STAMPED (with the document's hash), VOID; 404
  ``stamp_not_found`` for unknown and STOCK serials; 404 ``invalid_serial`` for a wrong check
  character or format, answered before any database look-up; 429 with ``Retry-After`` per client;
* ``stamping.document_stamped.v1``: applied once; the same stamping again changes nothing; a
  second use by another stamping is refused, counted in ``emeterai_serial_reuse_total`` and
  recorded once in ``reuse_attempts``;
* ``GET /v1/keys``: a JWK set with which a third party verifies stamp tokens;
* the OpenAPI document is valid and names both routes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

import jwt
from emeterai_shared.contracts.events import SerialsIssued
from emeterai_shared.db import create_pool
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import eventually
from minting_service.domain.serial import generate
from minting_service.domain.token import verify_token
from minting_service.service_layer.stock import void_serials
from openapi_spec_validator import validate
from prometheus_client import REGISTRY

if TYPE_CHECKING:
    from conftest import Minting

STAMPED_QUEUE = "minting.on_document_stamped"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def issue(minting: Minting, quantity: int) -> tuple[UUID, list[str]]:
    """Serials of a freshly paid order (the caller runs a worker)."""
    order = minting.order(quantity)
    await minting.publish(order)
    await minting.issuance(order.order_id)
    return order.order_id, await minting.serials_of(order.order_id)


def wrong_check(sn: str) -> str:
    return sn[:-1] + ("1" if sn[-1] == "0" else "0")


async def test_registry_shows_issued_stamps_and_hides_the_rest(minting: Minting) -> None:
    async with minting.worker():
        _, (unused, to_void) = await issue(minting, 2)
    status, body, _ = await minting.get(f"/v1/stamps/{unused}")
    assert status == 200
    assert {k: body[k] for k in ("sn", "status", "face_value", "stamped_at", "document_sha256")} == \
        {"sn": unused, "status": "UNUSED", "face_value": 10_000, "stamped_at": None, "document_sha256": None}
    assert body["minted_at"] is not None
    assert (await minting.get(f"/v1/stamps/{unused.lower()}"))[1]["sn"] == unused

    async with unit_of_work(minting.pool) as uow:
        result = await void_serials(uow, [to_void], "test", datetime.now(UTC))
    assert result == {"voided": [to_void], "refused": {}}
    status, body, _ = await minting.get(f"/v1/stamps/{to_void}")
    assert (status, body["status"]) == (200, "VOID")

    stock = await minting.pool.fetchval("SELECT sn FROM serials WHERE status = 'STOCK' ORDER BY seq DESC LIMIT 1")
    for sn in (stock, generate()):
        status, body, _ = await minting.get(f"/v1/stamps/{sn}")
        assert (status, body["error"]["code"]) == (404, "stamp_not_found")
    for sn in (wrong_check(unused), "ABC", unused + "0", unused[:-2] + "-" + unused[-1]):
        status, body, _ = await minting.get(f"/v1/stamps/{sn}")
        assert (status, body["error"]["code"]) == (404, "invalid_serial"), sn
    assert "check" in (await minting.get(f"/v1/stamps/{wrong_check(unused)}"))[1]["error"]["message"]


async def test_a_document_stamped_uses_its_serial_once(minting: Minting) -> None:
    async with minting.worker():
        _, (sn,) = await issue(minting, 1)
        stamped = metric("emeterai_stamps_stamped_total")
        first = minting.stamped(sn)
        await minting.publish(first)
        body = await eventually(lambda: _stamp_if(minting, sn, "STAMPED"), message="the serial stamped")
        assert body["document_sha256"] == first.document_sha256 and body["stamped_at"] is not None
        assert metric("emeterai_stamps_stamped_total") == stamped + 1

        repeated = await minting.publish(first)  # the same stamping, under a new message id
        await eventually(lambda: minting.handled(STAMPED_QUEUE, repeated), message="the repeated event")
        assert (await minting.get(f"/v1/stamps/{sn}"))[1] == body
        assert metric("emeterai_stamps_stamped_total") == stamped + 1

        reuse = metric("emeterai_serial_reuse_total", status="STAMPED")
        second = minting.stamped(sn)
        for _ in range(2):  # the refused use, and the same refused use again
            message_id = await minting.publish(second)
            await eventually(lambda m=message_id: minting.handled(STAMPED_QUEUE, m), message="the second use")
        assert metric("emeterai_serial_reuse_total", status="STAMPED") == reuse + 1
        attempts = await minting.pool.fetch("SELECT * FROM reuse_attempts WHERE sn = $1", sn)
        assert [(a["stamping_id"], a["found_status"], a["first_stamping_id"], a["document_sha256"])
                for a in attempts] == [(second.stamping_id, "STAMPED", first.stamping_id, second.document_sha256)]
        assert (await minting.get(f"/v1/stamps/{sn}"))[1] == body  # unchanged


async def test_uses_of_void_stock_and_unknown_serials_are_refused(minting: Minting) -> None:
    async with minting.worker():
        _, (void,) = await issue(minting, 1)
        stock = await minting.pool.fetchval("SELECT sn FROM serials WHERE status = 'STOCK' ORDER BY seq DESC LIMIT 1")
        async with unit_of_work(minting.pool) as uow:
            await void_serials(uow, [void], "test", datetime.now(UTC))
        for sn, status in ((void, "VOID"), (stock, "STOCK"), (generate(), "UNKNOWN")):
            before = metric("emeterai_serial_reuse_total", status=status)
            await minting.publish(minting.stamped(sn))
            await eventually(lambda s=sn: minting.pool.fetchval("SELECT 1 FROM reuse_attempts WHERE sn = $1", s),
                             message=f"the refused use of a {status} serial")
            assert metric("emeterai_serial_reuse_total", status=status) == before + 1
    assert await minting.pool.fetchval("SELECT status FROM serials WHERE sn = $1", stock) == "STOCK"
    assert (await minting.get(f"/v1/stamps/{void}"))[1]["status"] == "VOID"


async def _stamp_if(minting: Minting, sn: str, status: str) -> dict[str, object] | None:
    code, body, _ = await minting.get(f"/v1/stamps/{sn}")
    return body if code == 200 and body["status"] == status else None


async def test_tokens_verify_with_the_published_jwk_alone(minting: Minting) -> None:
    async with minting.worker():
        order_id, serials = await issue(minting, 2)
    status, keys, headers = await minting.get("/v1/keys")
    assert status == 200 and "max-age" in headers["Cache-Control"]
    [key] = keys["keys"]
    assert {k: key[k] for k in ("kty", "crv", "alg", "use")} == {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
                                                                  "use": "sig"}
    public = {key["kid"]: jwt.PyJWK.from_dict(key).key}
    [issued] = await minting.events(SerialsIssued.TYPE, order_id)
    assert isinstance(issued, SerialsIssued)
    for s in issued.serials:
        assert jwt.get_unverified_header(s.token)["kid"] == key["kid"]
        assert verify_token(s.token, public)["sn"] == s.sn
    assert sorted(s.sn for s in issued.serials) == serials


async def test_the_registry_is_rate_limited_per_client(minting: Minting) -> None:
    sn = generate()
    async with minting.api(registry_rate_per_s=0.01, registry_burst=3) as base_url:
        answers = [await minting.get(f"/v1/stamps/{sn}", base_url) for _ in range(4)]
        assert [status for status, _, _ in answers] == [404, 404, 404, 429]
        _, body, headers = answers[-1]
        assert body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
        status, _, _ = await minting.get("/v1/keys", base_url)  # not the registry: not limited
        assert status == 200


async def test_a_bad_serial_is_answered_without_the_database(minting: Minting) -> None:
    closed = await create_pool(minting.settings.database_url, max_size=1)
    await closed.close()
    sn = generate()
    async with minting.api(pool=closed) as base_url:
        status, body, _ = await minting.get(f"/v1/stamps/{sn[:-1]}{wrong_check(sn)[-1]}", base_url)
        assert (status, body["error"]["code"]) == (404, "invalid_serial")
        status, body, headers = await minting.get(f"/v1/stamps/{sn}", base_url)  # this one needs the database
        assert (status, body["error"]["code"]) == (503, "unavailable")  # out of reach: retry, not a 500
        assert headers["Retry-After"]


async def test_openapi_document_is_valid(minting: Minting) -> None:
    status, doc, _ = await minting.get("/openapi.json")
    assert status == 200
    validate(doc)
    assert {"/v1/keys", "/v1/stamps/{sn}"} <= set(doc["paths"])
    assert {"KeySet", "Jwk", "StampView"} <= set(doc["components"]["schemas"])
