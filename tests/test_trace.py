"""One trace from ``POST /v1/orders`` to the stamps, across real processes.

Every process exports its spans over OTLP/HTTP to a small collector run by this test. The bank's
payment callback is a new HTTP request (its own trace), yet the capture and everything after it
(order PAID and minting's issuance, both from the capture, then stamping's quota and order
FULFILLED) continue the order's trace;
the callback's span links to it.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from emeterai_testkit.clients import Buyer
from emeterai_testkit.fixtures import eventually, free_port
from emeterai_testkit.platform import Platform
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from payment_service.adapters.banksim import BankSimulator
from payment_service.adapters.snap import PAYMENT_PATH

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]
PROTOBUF = "application/x-protobuf"

ORDER_TRACE_CONSUMERS = {
    ("payment", "payment.on_order_placed process"),
    ("order", "order.on_bill_issued process"),
    ("order", "order.on_payment_captured process"),
    ("minting", "minting.on_payment_captured process"),
    ("order", "order.on_serials_issued process"),
    ("stamping", "stamping.on_serials_issued process"),
}
"""(service.name, span name) of the consumer spans the order's trace must reach."""


@dataclass(frozen=True)
class Exported:
    service: str
    process: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    linked_traces: tuple[str, ...]


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: every span exported to it, decoded."""

    url: str
    spans: list[Exported] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}

    async def receive(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            self.refused.append(request.content_type)
            return web.Response(status=415)
        raw = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        export = ExportTraceServiceRequest()
        export.ParseFromString(raw)
        for resource_spans in export.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(Exported(
                        service=str(resource.get("service.name", "")),
                        process=str(resource.get("process.kind", "")),
                        name=s.name, kind=s.kind, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None,
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        linked_traces=tuple(link.trace_id.hex() for link in s.links),
                    ))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)

    def in_trace(self, trace_id: str) -> list[Exported]:
        return [s for s in self.spans if s.trace_id == trace_id]


@asynccontextmanager
async def otlp_collector() -> AsyncIterator[Collector]:
    port = free_port()
    collector = Collector(f"http://127.0.0.1:{port}")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", collector.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield collector
    finally:
        await runner.cleanup()


def ancestors(span: Exported, spans: list[Exported]) -> list[Exported]:
    """``span`` and its exported ancestors, nearest first."""
    by_id = {s.span_id: s for s in spans}
    chain = [span]
    while chain[-1].parent_id is not None and chain[-1].parent_id in by_id:
        chain.append(by_id[chain[-1].parent_id])
    return chain


async def test_one_trace_from_the_order_through_payment_minting_and_stamping(
    purchase_platform: Any, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    async with otlp_collector() as collector, \
            purchase_platform(stock=10, stamping=True, process_env=collector.env) as platform, \
            aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id = await buyer.order(2)
        bill = await buyer.bill(order_id)
        _, answer = await bank_client(platform, session).pay(
            va_customer_no(platform, bill["virtual_account_no"]), bill["amount"])
        assert answer["responseCode"] == "2002500", answer
        serials = (await buyer.status_becomes(order_id, "FULFILLED"))["serials"]
        assert len(serials) == 2

        async def in_quota() -> bool:
            async with session.get(f"{platform.url('stamping')}/v1/quota", headers=buyer.auth) as r:
                assert r.status == 200, await r.text()
                return set(serials) <= set((await r.json())["serials_available"])

        await eventually(in_quota, timeout_s=60, interval_s=0.2, message="the serials in the stamping quota")

        def order_request() -> Exported | None:
            found = [s for s in collector.spans if s.service == "order" and s.kind == Span.SPAN_KIND_SERVER
                     and s.name.startswith("POST /v1/orders") and s.attributes.get("http.response.status_code") == 202]
            assert len(found) <= 1, found
            return found[0] if found else None

        request: Exported = await eventually(order_request, message="the POST /v1/orders span")
        order_trace = request.trace_id

        def reached() -> set[tuple[str, str]]:
            seen = {(s.service, s.name) for s in collector.in_trace(order_trace) if s.kind == Span.SPAN_KIND_CONSUMER}
            return ORDER_TRACE_CONSUMERS - seen

        try:
            await eventually(lambda: not reached(), timeout_s=30, interval_s=0.2,
                             message=f"consumer spans in the order's trace {order_trace}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; missing (service, span): {sorted(reached())}") from exc

        def callback() -> Exported | None:
            found = [s for s in collector.spans if s.service == "payment" and s.kind == Span.SPAN_KIND_SERVER
                     and s.name == f"POST {PAYMENT_PATH}"]
            return found[0] if found else None

        bank_request: Exported = await eventually(callback, message="the bank callback's span")

    assert not collector.refused, collector.refused
    spans = collector.in_trace(order_trace)
    assert request.parent_id is None, "the buyer's request starts the trace"
    for service, name in sorted(ORDER_TRACE_CONSUMERS):
        consumers = [s for s in spans if (s.service, s.name) == (service, name)]
        assert consumers, (service, name)
        for span in consumers:
            assert span.process == "worker", span
            assert ancestors(span, spans)[-1] == request, f"{name} does not descend from POST /v1/orders"
    # the capture's chain passes through payment's bill issuance, not through the bank's request
    (captured,) = [s for s in spans if s.name == "order.on_payment_captured process"]
    assert [s.name for s in ancestors(captured, spans)][1:] == ["payment.on_order_placed process",
                                                                 request.name]
    # minting takes the same capture (no order.paid hop): a sibling of the order's, same chain
    (issuance,) = [s for s in spans if s.name == "minting.on_payment_captured process"]
    assert [s.name for s in ancestors(issuance, spans)][1:] == ["payment.on_order_placed process", request.name]
    (quota,) = [s for s in spans if s.name == "stamping.on_serials_issued process"]
    assert issuance in ancestors(quota, spans)

    # the bank's callback is its own trace, linked to the order's; nothing else runs in it
    assert bank_request.trace_id != order_trace
    assert order_trace in bank_request.linked_traces
    assert {s.service for s in collector.in_trace(bank_request.trace_id)} == {"payment"}
