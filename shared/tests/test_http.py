"""The HTTP base, through the probe API and the four services, against the real servers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from emeterai_shared.db import create_pool, prepare_database
from emeterai_shared.http import (
    NO_NUL,
    PART_NAME,
    ApiError,
    OpenApi,
    Operation,
    create_app,
    decode_json,
    json_depth_exceeds,
    preferred_media_type,
)
from emeterai_shared.messaging import connect
from emeterai_shared.runtime import Process, Resources, ServiceDefinition, assemble, build_api
from emeterai_testkit.fixtures import REPO_ROOT, fetchval, settings_for
from emeterai_testkit.probe import SERVICE as PROBE
from minting_service.bootstrap import SERVICE as MINTING
from openapi_spec_validator import validate
from order_service.bootstrap import SERVICE as ORDER
from payment_service.bootstrap import SERVICE as PAYMENT
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from stamping_service.bootstrap import SERVICE as STAMPING

Client = TestClient[web.Request, web.Application]
SERVICES = [PROBE, ORDER, PAYMENT, MINTING, STAMPING]
ids = [s.name for s in SERVICES]


@asynccontextmanager
async def api(defn: ServiceDefinition, **overrides: Any) -> AsyncIterator[tuple[Client, Process[Any]]]:
    """``defn``'s API in-process, with a real pool on its (migrated) database and a broker link."""
    settings = settings_for(defn.settings_cls, **overrides)
    await prepare_database(settings.database_url, defn.migrations, defn.name)
    pool = await create_pool(settings.database_url, max_size=2)
    amqp = await connect(settings.amqp_url, name=f"{defn.name}-http-test")
    ctx = await assemble(defn, Resources(settings=settings, pool=pool, amqp=amqp))
    client: Client = TestClient(TestServer(build_api(defn, ctx)))
    await client.start_server()
    try:
        yield client, ctx
    finally:
        await client.close()
        for closer in reversed(ctx.resources.closers):
            await closer()
        await amqp.close()
        await pool.close()


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize("defn", SERVICES, ids=ids)
async def test_health_ready_and_openapi(servers: str, defn: ServiceDefinition) -> None:
    async with api(defn) as (client, _):
        resp = await client.get("/healthz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}

        resp = await client.get("/readyz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}

        resp = await client.get("/openapi.json")
        assert resp.status == 200
        doc = await resp.json()
        validate(doc)
        assert doc["openapi"].startswith("3.1")
        assert doc["info"]["title"] == defn.title
        assert {"/healthz", "/readyz", "/metrics", "/openapi.json"} <= set(doc["paths"])
        if defn is PROBE:
            assert "post" in doc["paths"]["/probe"]


@pytest.mark.parametrize("defn", SERVICES, ids=ids)
async def test_readyz_is_503_when_the_broker_connection_is_closed(
    servers: str, defn: ServiceDefinition
) -> None:
    async with api(defn) as (client, ctx):
        assert ctx.amqp is not None
        await ctx.amqp.close()
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["broker"].startswith("failed")
        assert (await client.get("/healthz")).status == 200  # alive, just not ready


async def test_readyz_is_503_when_the_database_is_unreachable(servers: str) -> None:
    async with api(PROBE) as (client, ctx):
        await ctx.pool.close()
        resp = await client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["checks"]["broker"] == "ok"
        assert body["checks"]["database"].startswith("failed")


async def test_metrics_is_prometheus_text(servers: str) -> None:
    async with api(PROBE) as (client, _):
        assert (await client.post("/probe", data=b"{")).status == 400
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "emeterai_http_requests" in families
    labels = [s.labels for s in families["emeterai_http_requests"].samples]
    assert {"service": "probe", "route": "/probe", "method": "POST", "status": "400"} in labels
    assert "emeterai_http_request_seconds" in families


async def test_valid_request_is_accepted(servers: str) -> None:
    async with api(PROBE) as (client, ctx):
        resp = await client.post("/probe", json={"seq": 41, "note": "hello"})
        assert resp.status == 202
        message_id = (await resp.json())["message_id"]
        row_type = await fetchval(ctx.settings, "SELECT message_type FROM outbox WHERE message_id = $1::uuid",
                                  message_id)
        assert row_type == "platform.probe_sent.v1"


@pytest.mark.parametrize("body", [b"{", b"not json", b"\xff\xfe{}", b"", b"[1, 2]", b'"text"', b"null"])
async def test_malformed_json_is_400(servers: str, body: bytes) -> None:
    async with api(PROBE) as (client, _):
        resp = await client.post("/probe", data=body, headers={"Content-Type": "application/json"})
        assert (await error_of(resp, 400))["code"] == "malformed_json"


async def test_invalid_request_is_422_with_fields(servers: str) -> None:
    async with api(PROBE) as (client, ctx):
        rows_before = await fetchval(ctx.settings, "SELECT count(*) FROM outbox")
        resp = await client.post("/probe", json={"seq": "not a number", "note": 5})
        error = await error_of(resp, 422)
        assert error["code"] == "invalid_request"
        assert {f["field"] for f in error["fields"]} == {"seq", "note"}
        assert all(f["message"] for f in error["fields"])

        resp = await client.post("/probe", json={})
        error = await error_of(resp, 422)
        assert [f["field"] for f in error["fields"]] == ["seq"]
        assert await fetchval(ctx.settings, "SELECT count(*) FROM outbox") == rows_before


async def test_unknown_route_is_404_json(servers: str) -> None:
    async with api(PROBE) as (client, _):
        resp = await client.get("/no/such/route")
        error = await error_of(resp, 404)
        assert error["code"] == "not_found"


async def test_wrong_method_is_405_json_with_allow(servers: str) -> None:
    async with api(PROBE) as (client, _):
        resp = await client.get("/probe")
        assert (await error_of(resp, 405))["code"] == "method_not_allowed"
        assert "POST" in resp.headers["Allow"]

        resp = await client.delete("/healthz")
        assert (await error_of(resp, 405))["code"] == "method_not_allowed"
        assert "GET" in resp.headers["Allow"]


async def test_body_over_the_limit_is_413_json(servers: str) -> None:
    async with api(PROBE, http_max_body_bytes=200) as (client, _):
        small = {"seq": 1, "note": "x" * 50}
        assert (await client.post("/probe", json=small)).status == 202
        big = {"seq": 1, "note": "x" * 500}
        resp = await client.post("/probe", json=big)
        assert (await error_of(resp, 413))["code"] == "payload_too_large"


async def test_unexpected_exception_is_500_without_details() -> None:
    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("database password is hunter2")

    async def refused(_: web.Request) -> web.Response:
        raise ApiError(409, "already_paid", "order is already paid", headers={"Retry-After": "3"},
                       extra={"order_id": "o-1"})

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = create_app("boom", max_body_bytes=1024)
    app.router.add_get("/boom", boom)
    app.router.add_get("/refused", refused)
    app.router.add_get("/moved", moved)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/boom")
        text = await resp.text()
        error = await error_of(resp, 500)
        assert error == {"code": "internal_error", "message": error["message"]}
        for leak in ("hunter2", "Traceback", "RuntimeError", "http.py", 'File "'):
            assert leak not in text

        resp = await client.get("/refused")
        assert await error_of(resp, 409) == {"code": "already_paid", "message": "order is already paid",
                                              "order_id": "o-1"}
        assert resp.headers["Retry-After"] == "3"

        resp = await client.get("/moved", allow_redirects=False)
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere"


async def test_openapi_cli_prints_a_valid_document(servers: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "order_service", "openapi", cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    doc = json.loads(stdout)
    validate(doc)
    assert doc["info"]["title"] == ORDER.title
    async with api(ORDER) as (client, _):
        served = await (await client.get("/openapi.json")).json()
    assert served == doc


async def test_a_database_out_of_connections_is_503_not_500(servers: str) -> None:
    """A real PostgreSQL refusal (SQLSTATE 53300, as when `max_connections` is reached) answers 503."""
    admin = await asyncpg.connect("postgresql://root@127.0.0.1:5432/postgres")
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'emeterai_one_connection'"):
            await admin.execute("CREATE ROLE emeterai_one_connection LOGIN CONNECTION LIMIT 1")
    finally:
        await admin.close()
    url = "postgresql://emeterai_one_connection@127.0.0.1:5432/postgres"
    held = await asyncpg.connect(url)

    async def query(_: web.Request) -> web.Response:
        conn = await asyncpg.connect(url)  # the role's only connection is taken
        await conn.close()
        return web.json_response({})

    app = create_app("db", max_body_bytes=1024)
    app.router.add_get("/query", query)
    try:
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/query")
            error = await error_of(resp, 503)
            assert error["code"] == "unavailable" and resp.headers["Retry-After"] == "2"
    finally:
        await held.close()


@pytest.mark.parametrize(("body", "code"), [(b"[" * 50_000, "too_deeply_nested"),
                                            (b'{"seq": 1, "note": ' + b'{"a":' * 50_000, "too_deeply_nested"),
                                            (b'{"seq": 1, "note": "a\\u0000b"}', "malformed_json"),
                                            (b'{"seq": 1, "note": "\\udc00"}', "malformed_json"),
                                            (b'{"seq": ' + b"9" * 5000 + b"}", "malformed_json")])
async def test_hostile_json_is_400_never_500(servers: str, body: bytes, code: str) -> None:
    """``read_json`` bounds nesting before decoding (Python's decoder would raise RecursionError) and
    refuses what no column can store and what Python cannot turn into an int."""
    async with api(PROBE) as (client, _):
        resp = await client.post("/probe", data=body, headers={"Content-Type": "application/json"})
        assert (await error_of(resp, 400))["code"] == code


def test_json_depth_is_read_lexically() -> None:
    assert not json_depth_exceeds(b'["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"]"]', 2)
    assert not json_depth_exceeds(b"[" * 32 + b"]" * 32)
    assert json_depth_exceeds(b"[" * 33)
    assert json_depth_exceeds(b'{"a":' * 33)
    assert decode_json(b'{"a": [1, {"b": "\\u00e9"}]}') == {"a": [1, {"b": "é"}]}


class _Form(BaseModel):
    text: str
    file: bytes


class _Body(BaseModel):
    name: str
    nested: dict[str, Any] = {}


def test_the_document_says_what_every_route_can_answer() -> None:
    spec = OpenApi("t")
    spec.add(Operation("POST", "/things", "make", request=_Body, security=["bearer"],
                       responses={201: ("made", None)},
                       links={201: {"Read": {"operationId": "get_things_id",
                                             "parameters": {"id": "$response.body#/id"}}}}))
    spec.add(Operation("POST", "/forms", "upload", request=_Form, request_content_type="multipart/form-data",
                       responses={200: ("ok", None)}))
    spec.add(Operation("GET", "/healthz", "alive", responses={200: ("alive", None)}))
    cookie = {"Set-Cookie": {"description": "a place", "schema": {"type": "string"}}}
    spec.add(Operation("POST", "/line", "join", responses={200: ("in", None)}, headers={200: cookie, 503: cookie}))
    doc = spec.document()
    validate(doc)
    line = doc["paths"]["/line"]["post"]["responses"]
    assert line["200"]["headers"] == cookie
    assert set(line["503"]["headers"]) == {"Retry-After", "Set-Cookie"}  # beside the kernel's, not instead
    made = doc["paths"]["/things"]["post"]
    assert made["operationId"] == "post_things"
    assert set(made["responses"]) == {"201", "400", "401", "413", "503"}
    assert made["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert made["responses"]["201"]["links"]["Read"]["operationId"] == "get_things_id"
    body = doc["components"]["schemas"]["_Body"]
    assert body["properties"]["name"]["pattern"] == NO_NUL
    assert body["additionalProperties"] == {"$ref": "#/components/schemas/JsonValue"}
    assert body["propertyNames"] == {"pattern": NO_NUL}
    form = doc["components"]["schemas"]["_Form"]
    assert form["additionalProperties"] is True and form["propertyNames"] == {"pattern": PART_NAME}
    assert form["properties"]["text"]["pattern"] == NO_NUL and "pattern" not in form["properties"]["file"]
    assert set(doc["paths"]["/healthz"]["get"]["responses"]) == {"200"}
    error = doc["components"]["schemas"]["ErrorBody"]
    assert error["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}


def test_a_status_may_answer_a_file_or_its_model_as_json() -> None:
    spec = OpenApi("t")
    spec.add(Operation("GET", "/receipts/{id}", "a receipt", responses={200: ("the receipt", _Body)},
                       parameters=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                       media={200: "application/pdf"}))
    doc = spec.document()
    validate(doc)
    content = doc["paths"]["/receipts/{id}"]["get"]["responses"]["200"]["content"]
    assert content == {"application/pdf": {"schema": {"type": "string"}},
                       "application/json": {"schema": {"$ref": "#/components/schemas/_Body"}}}


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, "application/pdf"),
    ("", "application/pdf"),
    ("*/*", "application/pdf"),
    ("application/json", "application/json"),
    ("Application/JSON; charset=utf-8", "application/json"),
    ("application/pdf", "application/pdf"),
    ("application/json, application/pdf", "application/pdf"),
    ("application/pdf;q=0.5, application/json", "application/json"),
    ("application/*;q=0.4, application/json;q=0.9", "application/json"),
    ("application/json;q=0.9, */*;q=1", "application/pdf"),
    ("application/json;q=0, */*", "application/pdf"),
    ("text/html", "application/pdf"),
    ("application/json;q=bogus, application/pdf;q=0.1", "application/pdf"),
    ("garbage", "application/pdf"),
])
def test_the_preferred_media_type_follows_accept(accept: str | None, chosen: str) -> None:
    assert preferred_media_type(accept, ("application/pdf", "application/json")) == chosen


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_not_in_its_content_encoding_is_400(servers: str, encoding: str) -> None:
    """aiohttp decompresses request bodies itself; a body that is not what its Content-Encoding says
    raised RequestPayloadError out of ``request.read()``: a 500 before."""
    async with api(PROBE) as (client, _):
        resp = await client.post("/probe", data=b"not compressed", headers={
            "Content-Type": "application/json", "Content-Encoding": encoding, "Connection": "close"})
        assert (await error_of(resp, 400))["code"] == "malformed_body"
