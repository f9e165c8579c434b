"""The HTTP base every service API uses: JSON errors, tracing, metrics, health and OpenAPI.

Errors are always ``{"error": {"code": ..., "message": ...}}`` with a stable machine code. A bad
request never becomes a 500, and an unexpected failure is a 500 without a stack trace (the trace
goes to the log with the request's trace id).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from aiohttp import web
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from emeterai_shared.telemetry import HTTP_LATENCY, HTTP_REQUESTS, IN_FLIGHT, SHED, extract_context, tracer

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
Check = Callable[[], Awaitable[None]]

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 411: "length_required",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_request",
    429: "rate_limited", 503: "unavailable",
}


class ApiError(Exception):
    """An answer for the caller's mistake or our refusal, with a stable code."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def error_response(status: int, code: str, message: str, *,
                   headers: Mapping[str, str] | None = None,
                   extra: Mapping[str, Any] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, **(extra or {})}}
    return web.json_response(body, status=status, headers=headers)


async def read_json(request: web.Request, model: type[T]) -> T:
    """Parse and validate a JSON body: 400 ``malformed_json``, 422 ``invalid_request``."""
    raw = await request.read()
    try:
        data = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_message(exc),
                       extra={"fields": _fields(exc)}) from None


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")


def _fields(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]


def _route_name(request: web.Request) -> str:
    info = request.match_info
    # match_info is a dict of path parameters: empty (falsy) for routes without any
    resource = info.route.resource if info is not None and info.route is not None else None
    return resource.canonical if resource is not None else "unmatched"


DATABASE_UNAVAILABLE = (
    asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    ConnectionRefusedError,
)
"""Errors that mean the database is out of reach (down, restarting, out of connections): 503, not 500.
``InterfaceError`` and ``InternalClientError`` are what asyncpg raises for a connection closed under a
query or a transaction, e.g. during a PostgreSQL restart (seen in ``make chaos``)."""

UNSHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def make_middlewares(service: str, max_in_flight: int = 0) -> list[Any]:
    """Observation (span, counters, latency) and, with ``max_in_flight``, a cap on the requests one
    process answers at once: past it, ``503 busy`` at once (probes and metrics are never refused),
    so a flood queues nowhere inside the process."""
    in_flight = IN_FLIGHT.labels(service)
    busy = 0

    @web.middleware
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal busy
        if max_in_flight and busy >= max_in_flight and request.path not in UNSHED_PATHS:
            SHED.labels(service, _route_name(request), "503").inc()
            return error_response(503, "busy", "this server is answering too many requests; retry shortly",
                                  headers={"Retry-After": "1"})
        busy += 1
        in_flight.set(busy)
        try:
            return await _observed(request, handler)
        finally:
            busy -= 1
            in_flight.set(busy)

    async def _observed(request: web.Request, handler: Any) -> web.StreamResponse:
        route = _route_name(request)
        started = time.perf_counter()
        status = 500
        with tracer().start_as_current_span(
            f"{request.method} {route}",
            context=extract_context(dict(request.headers)),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route},
        ) as span:
            try:
                response = await _answer(request, handler)
                status = response.status
                span.set_attribute("http.response.status_code", status)
                return response
            finally:
                if status in (429, 503):
                    SHED.labels(service, route, str(status)).inc()
                if route not in ("/metrics", "/healthz"):
                    HTTP_REQUESTS.labels(service, route, request.method, str(status)).inc()
                    HTTP_LATENCY.labels(service, route, request.method).observe(
                        time.perf_counter() - started
                    )

    return [observe]


async def _answer(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra)
    except DATABASE_UNAVAILABLE as exc:
        log.warning("database unavailable in %s %s: %r", request.method, request.path, exc)
        return error_response(503, "unavailable", "the service cannot reach its database right now; retry shortly",
                              headers={"Retry-After": "2"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, exc.reason, headers=headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; it has been logged")


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    request: type[BaseModel] | None = None
    responses: dict[int, tuple[str, type[BaseModel] | None]] = field(default_factory=dict)
    security: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    request_content_type: str = "application/json"
    parameters: list[dict[str, Any]] = field(default_factory=list)
    webhook: bool = False
    """A request *we* send to the caller (OpenAPI 3.1 ``webhooks``, keyed by ``path`` as its name)."""


class ErrorBody(BaseModel):
    error: dict[str, Any]


class OpenApi:
    """Collects operations and renders an OpenAPI 3.1 document from the pydantic models."""

    def __init__(self, title: str, version: str = "1.0.0", description: str = ""):
        self.title = title
        self.version = version
        self.description = description
        self.operations: list[Operation] = []
        self.security_schemes: dict[str, Any] = {}

    def add(self, op: Operation) -> None:
        self.operations.append(op)

    def document(self) -> dict[str, Any]:
        schemas: dict[str, Any] = {}

        def ref(model: type[BaseModel]) -> dict[str, str]:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas[model.__name__] = schema
            return {"$ref": f"#/components/schemas/{model.__name__}"}

        paths: dict[str, dict[str, Any]] = {}
        webhooks: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            entry: dict[str, Any] = {"summary": op.summary, "responses": {}}
            if op.tags:
                entry["tags"] = op.tags
            if op.parameters:
                entry["parameters"] = op.parameters
            if op.security:
                entry["security"] = [{name: []} for name in op.security]
            if op.request is not None:
                entry["requestBody"] = {
                    "required": True, "content": {op.request_content_type: {"schema": ref(op.request)}},
                }
            for status, (desc, model) in sorted(op.responses.items()):
                resp: dict[str, Any] = {"description": desc}
                body_model = model or (ErrorBody if status >= 400 else None)
                if body_model is not None:
                    resp["content"] = {"application/json": {"schema": ref(body_model)}}
                entry["responses"][str(status)] = resp
            (webhooks if op.webhook else paths).setdefault(op.path, {})[op.method.lower()] = entry
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": paths,
            "components": {"schemas": schemas},
        }
        if webhooks:
            doc["webhooks"] = webhooks
        if self.security_schemes:
            doc["components"]["securitySchemes"] = self.security_schemes
        return doc


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


def add_probe_routes(app: web.Application, spec: OpenApi | None, checks: Mapping[str, Check]) -> None:
    """``/healthz`` (process alive), ``/readyz`` (dependencies reachable), ``/metrics``."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"failed: {type(exc).__name__}"
        ok = all(v == "ok" for v in results.values())
        return web.json_response({"status": "ok" if ok else "unavailable", "checks": results},
                                 status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if spec is not None:
        document_cache: dict[str, Any] = {}

        async def openapi(_: web.Request) -> web.Response:
            if not document_cache:
                document_cache.update(spec.document())
            return web.json_response(document_cache)

        app.router.add_get("/openapi.json", openapi)
        spec.add(Operation("GET", "/healthz", "Process is alive", responses={200: ("alive", Health)},
                           tags=["operations"]))
        spec.add(Operation("GET", "/readyz", "Database and broker are reachable",
                           responses={200: ("ready", Health), 503: ("not ready", Health)},
                           tags=["operations"]))
        spec.add(Operation("GET", "/metrics", "Prometheus metrics (text format)",
                           responses={200: ("metrics", None)}, tags=["operations"]))
        spec.add(Operation("GET", "/openapi.json", "This document",
                           responses={200: ("OpenAPI document", None)}, tags=["operations"]))


def create_app(service: str, *, max_body_bytes: int, max_in_flight: int = 0) -> web.Application:
    return web.Application(middlewares=make_middlewares(service, max_in_flight), client_max_size=max_body_bytes)
