"""Trace context travels HTTP request → outbox row → AMQP headers → consumer, and into the logs."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from emeterai_shared.db import create_pool
from emeterai_shared.http import create_app
from emeterai_shared.runtime import Resources, assemble, build_api
from emeterai_shared.telemetry import inject_context, setup_logging, setup_tracing, tracer
from emeterai_testkit.fixtures import eventually, fetchval, reset_service, running, settings_for
from emeterai_testkit.probe import QUEUE, SERVICE, ProbeSettings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

Client = TestClient[web.Request, web.Application]
CONSUMER_SPAN = f"{QUEUE} process"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test, from the process tracer provider; removed afterwards."""
    setup_tracing("probe", "test")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "setup_tracing must install an SDK provider"
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    multi = provider._active_span_processor
    before = multi._span_processors
    provider.add_span_processor(processor)
    try:
        yield exporter
    finally:
        with multi._lock:
            multi._span_processors = tuple(p for p in multi._span_processors if p is not processor)
        processor.shutdown()
        assert before == multi._span_processors


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The process logging as ``setup_logging`` configures it, written to a buffer; restored after."""
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    noisy = {name: logging.getLogger(name).level for name in ("aiormq", "aio_pika", "aiohttp.access")}
    buffer = io.StringIO()
    try:
        setup_logging("probe", "test", "INFO", json=True)
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def new_traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def chain(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """``span`` and its ancestors among the finished spans, nearest first."""
    out = [span]
    while out[-1].parent is not None and out[-1].parent.span_id in by_id:
        out.append(by_id[out[-1].parent.span_id])
    return out


@asynccontextmanager
async def probe_api(settings: ProbeSettings) -> AsyncIterator[Client]:
    pool = await create_pool(settings.database_url, max_size=2)
    process = await assemble(SERVICE, Resources(settings=settings, pool=pool))
    client: Client = TestClient(TestServer(build_api(SERVICE, process)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await pool.close()


async def test_trace_continues_from_request_to_consumers(
    servers: str, spans: InMemorySpanExporter
) -> None:
    settings = settings_for(ProbeSettings)
    assert isinstance(settings, ProbeSettings)
    await reset_service(SERVICE, settings)
    traceparent, trace_id, caller_span = new_traceparent()

    async with probe_api(settings) as client:
        resp = await client.post("/probe", json={"seq": 7, "note": "forward"},
                                 headers={"traceparent": traceparent})
        assert resp.status == 202
        message_id = (await resp.json())["message_id"]
        untraced = await client.post("/probe", json={"seq": 8})
        assert untraced.status == 202
        untraced_id = (await untraced.json())["message_id"]

    async with running(SERVICE, settings):
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 3 FROM probe_effects"),
                         message="the probe, its forwarded follow-up and the untraced probe applied")
        await eventually(lambda: len([s for s in spans.get_finished_spans() if s.name == CONSUMER_SPAN]) == 3,
                         message="three consumer spans")

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished if s.context is not None}
    servers_ = [s for s in finished if s.kind == trace.SpanKind.SERVER and hex_trace(s) == trace_id]
    assert len(servers_) == 1
    (server,) = servers_
    assert server.name == "POST /probe"
    assert server.attributes is not None and server.attributes["http.route"] == "/probe"
    assert server.parent is not None and server.parent.is_remote
    assert format(server.parent.span_id, "016x") == caller_span

    consumers = {s.attributes["messaging.message.id"]: s for s in finished  # type: ignore[index]
                 if s.name == CONSUMER_SPAN and s.attributes is not None}
    assert len(consumers) == 3
    first = consumers.pop(message_id)
    assert first.kind == trace.SpanKind.CONSUMER
    assert hex_trace(first) == trace_id
    assert chain(first, by_id)[-1] is server
    untraced_span = consumers.pop(untraced_id)
    (follow_up,) = consumers.values()
    assert hex_trace(follow_up) == trace_id
    follow_chain = chain(follow_up, by_id)
    assert first in follow_chain and follow_chain[-1] is server

    # a request without trace context starts its own trace, which its consumer continues
    assert hex_trace(untraced_span) != trace_id
    (untraced_root,) = [s for s in chain(untraced_span, by_id) if s.kind == trace.SpanKind.SERVER]
    assert untraced_root.parent is None


async def test_traceparent_header_is_honoured_whatever_its_case(spans: InMemorySpanExporter) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})

    app = create_app("casing", max_body_bytes=1024)
    app.router.add_get("/ok", ok)
    traceparent, trace_id, _ = new_traceparent()
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/ok", headers={"Traceparent": traceparent})).status == 200
    (server,) = [s for s in spans.get_finished_spans() if s.name == "GET /ok"]
    assert hex_trace(server) == trace_id


async def test_json_logs_carry_the_trace_id(spans: InMemorySpanExporter, json_log: io.StringIO) -> None:
    log = logging.getLogger("emeterai.test.tracing")

    async def work(_: web.Request) -> web.Response:
        log.info("working")
        return web.json_response({})

    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("kaput")

    app = create_app("logging", max_body_bytes=1024)
    app.router.add_get("/work", work)
    app.router.add_get("/boom", boom)
    work_parent, work_trace, _ = new_traceparent()
    boom_parent, boom_trace, _ = new_traceparent()
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/work", headers={"traceparent": work_parent})).status == 200
        assert (await client.get("/boom", headers={"traceparent": boom_parent})).status == 500
    log.info("outside any span")
    with tracer().start_as_current_span("manual") as manual:
        log.warning("inside a manual span")

    lines = records(json_log)
    by_message = {r["message"]: r for r in lines}
    working = by_message["working"]
    assert working["trace_id"] == work_trace
    (work_span,) = [s for s in spans.get_finished_spans() if s.name == "GET /work"]
    assert work_span.context is not None
    assert working["span_id"] == format(work_span.context.span_id, "016x")
    assert working["service"] == "probe" and working["level"] == "INFO"

    (unhandled,) = [r for r in lines if r["message"].startswith("unhandled error in GET /boom")]
    assert unhandled["trace_id"] == boom_trace
    assert unhandled["level"] == "ERROR" and "kaput" in unhandled.get("exc_info", "")

    assert by_message["outside any span"]["trace_id"] is None
    assert by_message["inside a manual span"]["trace_id"] == format(manual.get_span_context().trace_id, "032x")


def processors_of(provider: trace.TracerProvider) -> tuple[Any, ...]:
    assert isinstance(provider, TracerProvider), "setup_tracing must install an SDK provider"
    return tuple(provider._active_span_processor._span_processors)


@pytest.fixture
def unexported() -> Iterator[None]:
    """The process tracer provider as a process without an exporter has it: no span processor (any
    this test process has, e.g. from OTEL_EXPORTER_OTLP_ENDPOINT, is taken out for the test and put back)."""
    setup_tracing("probe", "test")
    provider = trace.get_tracer_provider()
    kept = processors_of(provider)
    multi = provider._active_span_processor  # type: ignore[attr-defined]
    with multi._lock:
        multi._span_processors = ()
    try:
        yield
    finally:
        with multi._lock:
            multi._span_processors = kept + multi._span_processors


def parts(traceparent: str) -> tuple[str, str, str]:
    """(trace id, span id, flags) of a W3C ``traceparent``."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and len(flags) == 2, traceparent
    assert int(trace_id, 16) and int(span_id, 16), traceparent
    return trace_id, span_id, flags


async def test_without_an_exporter_spans_record_nothing_yet_logs_carry_their_ids(
    unexported: None, json_log: io.StringIO
) -> None:
    log = logging.getLogger("emeterai.test.tracing")
    seen: list[trace.Span] = []

    async def work(_: web.Request) -> web.Response:
        span = trace.get_current_span()
        assert not span.is_recording(), "nothing receives the spans: none is recorded"
        seen.append(span)
        log.info("working")
        return web.json_response({})

    app = create_app("unexported", max_body_bytes=1024)
    app.router.add_get("/work", work)
    traceparent, trace_id, caller_span = new_traceparent()
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/work", headers={"traceparent": traceparent})).status == 200
        assert (await client.get("/work")).status == 200
    (continued, fresh) = seen
    for span in seen:
        assert span.get_span_context().is_valid
    context = continued.get_span_context()
    assert format(context.trace_id, "032x") == trace_id
    assert format(context.span_id, "016x") != caller_span, "the server span has a span id of its own"
    assert fresh.get_span_context().trace_id not in (0, context.trace_id), "a request without context: a new trace"

    working = [r for r in records(json_log) if r["message"] == "working"]
    assert [(r["trace_id"], r["span_id"]) for r in working] == [
        (format(s.get_span_context().trace_id, "032x"), format(s.get_span_context().span_id, "016x"))
        for s in seen]

    with tracer().start_as_current_span("manual") as manual:
        assert not manual.is_recording() and manual.get_span_context().is_valid
        assert parts(inject_context({})["traceparent"])[:2] == (
            format(manual.get_span_context().trace_id, "032x"), format(manual.get_span_context().span_id, "016x"))


async def test_without_an_exporter_outbox_rows_and_messages_carry_the_trace_as_before(
    servers: str, unexported: None
) -> None:
    """The request's trace context reaches the outbox row and, through the consumer, the row of the
    message it publishes, each hop with a span id of its own and the flags unchanged: the caller's
    (sampled or not), or the sampler's for a new trace (sampled, as if it were recorded), so a
    process downstream that exports its spans records them as it always did."""
    settings = settings_for(ProbeSettings)
    assert isinstance(settings, ProbeSettings)
    await reset_service(SERVICE, settings)
    _, sampled_trace, caller_span = new_traceparent()
    unsampled_trace = secrets.token_hex(16)
    sent = {"sampled": f"00-{sampled_trace}-{caller_span}-01", "unsampled": f"00-{unsampled_trace}-{caller_span}-00"}

    async with probe_api(settings) as client:
        ids: dict[str, str] = {}
        for seq, (name, traceparent) in enumerate(sent.items(), start=1):
            resp = await client.post("/probe", json={"seq": seq, "note": "forward"},
                                     headers={"traceparent": traceparent})
            assert resp.status == 202
            ids[name] = (await resp.json())["message_id"]
        resp = await client.post("/probe", json={"seq": 3})
        assert resp.status == 202
        ids["new"] = (await resp.json())["message_id"]

    async def traceparent_of(query: str, *args: Any) -> tuple[str, str, str]:
        headers = await fetchval(settings, query, *args)
        return parts(str(json.loads(headers)["traceparent"] if isinstance(headers, str) else headers["traceparent"]))

    rows = {name: await traceparent_of("SELECT headers FROM outbox WHERE message_id = $1::uuid", mid)
            for name, mid in ids.items()}
    assert rows["sampled"][0] == sampled_trace and rows["sampled"][2] == "01"
    assert rows["unsampled"][0] == unsampled_trace and rows["unsampled"][2] == "00"
    assert caller_span not in (rows["sampled"][1], rows["unsampled"][1])
    new_trace, _, new_flags = rows["new"]
    assert new_trace not in (sampled_trace, unsampled_trace)
    assert int(new_flags, 16) & 0x01, "a new trace is sampled, as the default sampler decides"

    async with running(SERVICE, settings, relay=True):
        await eventually(lambda: fetchval(settings, "SELECT count(*) = 5 FROM probe_effects"),
                         message="the probes and their forwarded follow-ups applied")
    for seq, name in ((1_000_001, "sampled"), (1_000_002, "unsampled")):
        follow_up = await traceparent_of("SELECT headers FROM outbox WHERE correlation_id = $1"
                                         " AND message_id <> $2::uuid", str(seq - 1_000_000), ids[name])
        assert follow_up[0] == rows[name][0] and follow_up[2] == rows[name][2], (name, follow_up, rows[name])
        assert follow_up[1] != rows[name][1], "the consumer's span has a span id of its own"
