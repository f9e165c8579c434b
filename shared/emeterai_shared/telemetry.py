"""Tracing, logging and metrics set-up shared by every process.

* Tracing: one OpenTelemetry ``TracerProvider`` per process with ``service.name``; spans are
  exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces variant) is set.
  Spans are *recorded* only while something receives them (a span processor: the exporter, or a
  test's): otherwise a span is a ``NonRecordingSpan`` that costs next to nothing yet has a real
  span context (the caller's trace id, or a new one; a new span id; the flags the sampler would
  give), so W3C trace context still travels HTTP → outbox row → AMQP headers and log lines still
  carry ``trace_id``/``span_id``. What goes on the wire is the same either way: a process that
  exports nothing never turns off tracing for the processes after it.
* Logging: one JSON object per line carrying ``trace_id`` and ``span_id`` when a span is active.
* Metrics: the default ``prometheus_client`` registry, served at ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager
from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

_configured = False


class _Tracer(trace.Tracer):
    """The SDK's tracer, recording only while its provider has a span processor (see the module)."""

    def __init__(self, sdk: sdk_trace.Tracer) -> None:
        self._sdk = sdk
        self._processors = sdk.span_processor

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        sdk = self._sdk
        if self._processors._span_processors:  # something receives the spans: record them
            return sdk.start_span(name, context, kind, attributes, links, start_time, record_exception,
                                  set_status_on_exception)
        parent = trace.get_current_span(context).get_span_context()
        ids = sdk.id_generator
        if parent.is_valid:
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
        else:
            trace_id, random_id = ids.generate_trace_id(), ids.is_trace_id_random()
        # the sampler's word, as a recording span would have it, so the flags downstream are the same
        decided = sdk.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        flags = (TraceFlags.SAMPLED if decided.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT) | (
            TraceFlags.RANDOM_TRACE_ID if random_id else TraceFlags.DEFAULT)
        return NonRecordingSpan(SpanContext(trace_id, ids.generate_span_id(), is_remote=False,
                                            trace_flags=TraceFlags(flags), trace_state=decided.trace_state))

    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time, record_exception,
                               set_status_on_exception)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception) as current:
            yield current


class _TracerProvider(TracerProvider):
    """The SDK provider whose tracers record spans only while a span processor receives them."""

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace.Tracer:
        found = super().get_tracer(instrumenting_module_name, instrumenting_library_version, schema_url,
                                   attributes)
        return _Tracer(found) if isinstance(found, sdk_trace.Tracer) else found


def setup_tracing(service_name: str, process_kind: str) -> TracerProvider:
    """Install the process-wide tracer provider once; later calls return it unchanged."""
    global _configured
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        return current
    resource = Resource.create(
        {"service.name": service_name, "service.namespace": "emeterai", "process.kind": process_kind}
    )
    provider = _TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def tracer(name: str = "emeterai") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_context(carrier: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Write the current trace context (``traceparent``/``tracestate``) into ``carrier``."""
    propagate.inject(carrier)
    return carrier


_NO_CONTEXT = Context()


def extract_context(carrier: Mapping[str, Any]) -> Context:
    """The context ``carrier`` (e.g. a request's or a message's headers) propagates; an empty one
    when it carries none of the propagator's fields (``traceparent``, ``tracestate``, ``baggage``).
    Only those fields are read: ``carrier.get`` of each (case-insensitive for HTTP headers)."""
    text: dict[str, str] = {}
    for key in propagate.get_global_textmap().fields:
        value = carrier.get(key)
        if value:
            text[key] = value.decode() if isinstance(value, bytes) else str(value)
    return propagate.extract(text) if text else _NO_CONTEXT


TRACE_HEADERS = ("traceparent", "tracestate")
"""The W3C trace-context headers a message or a stored record carries."""


def trace_headers_of(carrier: Mapping[str, Any]) -> dict[str, str]:
    """The W3C trace-context entries of ``carrier`` (e.g. a message's headers), as text, to keep
    with a record and pass later to ``UnitOfWork.publish(trace_headers=...)``; {} when none."""
    out: dict[str, str] = {}
    for key in TRACE_HEADERS:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if value:
            out[key] = str(value)
    return out


def span_context_of(carrier: Mapping[str, Any]) -> trace.SpanContext | None:
    """The remote span context ``carrier`` names, if valid (e.g. for a span link)."""
    ctx = trace.get_current_span(extract_context(carrier)).get_span_context()
    return ctx if ctx.is_valid else None


class _TraceIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else None
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else None
        return True


def setup_logging(service_name: str, process_kind: str, level: str = "INFO", json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceIdFilter())
    if json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"service": service_name, "process": process_kind},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {service_name}-{process_kind} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# Metrics every process may export; labels keep services apart when scraped together.
HANDLER_LATENCY = Histogram(
    "emeterai_handler_seconds", "Message handler latency (inbox + handler, inside the transaction)",
    ["queue", "outcome"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MESSAGES_CONSUMED = Counter(
    "emeterai_messages_consumed_total", "Messages taken off a queue, by outcome",
    ["queue", "outcome"],
)
MESSAGES_PUBLISHED = Counter(
    "emeterai_outbox_published_total", "Outbox rows published and confirmed by the broker", ["service"]
)
RELAY_PUBLISH_ATTEMPTS = Counter(
    "emeterai_relay_publish_attempts_total", "Relay batch publish attempts, by outcome",
    ["service", "outcome"],
)
OUTBOX_BACKLOG = Gauge("emeterai_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "emeterai_outbox_oldest_pending_seconds", "Age of the oldest unpublished outbox row", ["service"]
)
OUTBOX_PARKED = Gauge("emeterai_outbox_parked", "Outbox rows parked after repeated failures", ["service"])
QUEUE_DEPTH = Gauge("emeterai_queue_depth", "Ready messages in a consumer queue", ["queue"])
PARKED_MESSAGES = Gauge("emeterai_parked_messages", "Messages waiting in a parking queue", ["queue"])
PAID_MESSAGES_PARKED = Gauge(
    "emeterai_paid_messages_parked",
    "Parked messages that carry a paid order towards its serials or its refund (emeterai_shared.stranding): "
    "outbox rows parked (where=outbox) or messages in a parking queue (where=the queue)",
    ["service", "message_type", "where"],
)
SHED = Counter(
    "emeterai_shed_total", "Requests refused to protect the service: 429 (a caller's rate limit) or 503 "
    "(overloaded, busy)", ["service", "route", "status"]
)
ADMISSION_BACKLOG = Gauge("emeterai_admission_backlog", "Work accepted and not yet done, as admission sees it",
                          ["service"])
ADMISSION_LIMIT = Gauge("emeterai_admission_limit", "Backlog past which new work is shed (adapts to the drain rate)",
                        ["service"])
ADMISSION_DRAIN = Gauge("emeterai_admission_drain_per_second", "Measured drain rate of the admitted work",
                        ["service"])
ADMISSION_NEWCOMER_PACE = Gauge(
    "emeterai_admission_newcomer_pace_per_second",
    "New sessions one api process admits per second while its front-door slots are all taken", ["service"])
ADMISSION_NEWCOMER_TICKETS = Gauge(
    "emeterai_admission_newcomer_tickets",
    "Places in the newcomers' line one api process has given refused newcomers and not yet seen used or expired",
    ["service"])
IN_FLIGHT = Gauge("emeterai_http_in_flight", "HTTP requests being answered by this process", ["service"])
HTTP_REQUESTS = Counter(
    "emeterai_http_requests_total", "HTTP requests by route and status", ["service", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "emeterai_http_request_seconds", "HTTP request latency by route", ["service", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
