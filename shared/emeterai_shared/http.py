"""The HTTP base every service API uses: JSON errors, tracing, metrics, health and OpenAPI.

Errors are always ``{"error": {"code": ..., "message": ...}}`` with a stable machine code. A bad
request never becomes a 500, and an unexpected failure is a 500 without a stack trace (the trace
goes to the log with the request's trace id).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emeterai_shared.db import DATABASE_OUTAGE
from emeterai_shared.forwarded import TrustedProxies
from emeterai_shared.forwarded import middleware as forwarded_middleware
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


def respond(body: BaseModel, *, status: int = 200, headers: Mapping[str, str] | None = None,
            exclude_none: bool = False) -> web.Response:
    """A JSON answer built from the documented model (the one its ``Operation`` names), so the
    document and the wire cannot drift apart."""
    return web.json_response(body.model_dump(mode="json", by_alias=True, exclude_none=exclude_none),
                             status=status, headers=headers)


def preferred_media_type(accept: str | None, offered: Sequence[str]) -> str:
    """The one of ``offered`` the ``Accept`` header ranks highest (RFC 9110: each offer takes the q
    of the most specific range that matches it); a tie, no header or one that matches nothing
    chooses the first offer, the default (no 406)."""
    ranges: list[tuple[str, str, float]] = []
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if "/" not in media:
            continue
        main, sub = (x.strip().lower() for x in media.split("/", 1))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges.append((main, sub, q))

    def quality(offer: str) -> float:
        main, sub = offer.lower().split("/", 1)
        best, specificity = 0.0, -1
        for r_main, r_sub, q in ranges:
            rank = 2 if (r_main, r_sub) == (main, sub) else 1 if (r_main, r_sub) == (main, "*") else \
                0 if (r_main, r_sub) == ("*", "*") else -1
            if rank > specificity:
                best, specificity = q, rank
        return best

    chosen, chosen_q = offered[0], quality(offered[0])
    for offer in offered[1:]:
        if (q := quality(offer)) > chosen_q:
            chosen, chosen_q = offer, q
    return chosen


def error_response(status: int, code: str, message: str, *,
                   headers: Mapping[str, str] | None = None,
                   extra: Mapping[str, Any] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, **(extra or {})}}
    return web.json_response(body, status=status, headers=headers)


SHED_STATUSES = frozenset({429, 503})


_RETRY_AT: dict[int, str] = {}
"""``retry_at`` of the current time, by Unix second: a shed storm formats each second once."""


def retry_at(retry_after_s: int, now: datetime | None = None) -> str:
    """ISO 8601 UTC (seconds, ``Z``) of ``now`` + ``retry_after_s``: when a shed caller may come back."""
    if now is not None:
        at = now + timedelta(seconds=retry_after_s)
        return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    second = math.floor(time.time() + retry_after_s)
    found = _RETRY_AT.get(second)
    if found is None:
        if len(_RETRY_AT) >= 256:
            _RETRY_AT.clear()
        found = _RETRY_AT[second] = retry_at(0, datetime.fromtimestamp(second, UTC))
    return found


def shed(status: int, code: str, message: str, retry_after_s: float) -> ApiError:
    """The one way a shed answer is made (429 rate limits; 503 admission, busy, database out of
    reach, back-pressure): ``{"error": {"code", "message", "retry_after_s", "retry_at"}}`` and the
    ``Retry-After`` header, the same number of whole seconds (at least 1). Raise it, or answer it
    with ``shed_response``."""
    if status not in SHED_STATUSES:
        raise ValueError(f"a shed answer is a 429 or a 503, not {status}")
    seconds = max(1, math.ceil(retry_after_s))
    return ApiError(status, code, message, headers={"Retry-After": str(seconds)},
                    extra={"retry_after_s": seconds, "retry_at": retry_at(seconds)})


class ComeBackLine:
    """Callers told to come back, as a virtual queue that drains at a measured rate.

    Each caller is told to come back after the ones ahead of it (``ahead``, e.g. those waiting in a
    real line, plus those told before it and not yet drained) are served at ``rate_per_s``: at
    least 1 s, at most ``max_retry_after_s``. Callers past the cap are not counted beyond what the
    cap covers (they are all told the cap), so the line empties at most ``max_retry_after_s`` after
    the last refusal. With no rate measured yet callers are told 1 s and take no place."""

    def __init__(self, max_retry_after_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_retry_after_s = max_retry_after_s
        self.waiting = 0.0
        self._clock = clock
        self._at = clock()

    def tell(self, rate_per_s: float, ahead: int = 0) -> int:
        """Seconds the next caller should wait before coming back; counts it in the line."""
        if rate_per_s <= 0:
            return 1
        now = self._clock()
        self.waiting = max(0.0, self.waiting - rate_per_s * (now - self._at))
        self._at = now
        seconds = max(1, min(self.max_retry_after_s, math.ceil((ahead + self.waiting + 1) / rate_per_s)))
        self.waiting = min(self.waiting + 1, rate_per_s * self.max_retry_after_s)
        return seconds


def shed_response(status: int, code: str, message: str, retry_after_s: float) -> web.Response:
    """``shed`` as a response, for code outside a handler (middlewares)."""
    return _error_of(shed(status, code, message, retry_after_s))


def _error_of(exc: ApiError) -> web.Response:
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra)


NO_NUL = r"^[^\x00]*$"
"""Pattern of a JSON string field: any text but NUL, which no request body may hold (``decode_json``)."""

PART_NAME = r"^[^\x00-\x1f\x7f]*$"
"""A multipart part's name: no control characters, which make its header unreadable (400 malformed_form)."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a JSON body may have. Python's decoder recurses once per
level and fails with ``RecursionError`` near a thousand levels; no request of ours needs more
than a few, so deeper bodies are refused before decoding."""

_JSON_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
"""A JSON string (skipped whole, so brackets inside it do not count) or a bracket."""


class JsonBodyError(ValueError):
    """A body that is not a JSON document we read: ``code`` is ``malformed_json`` or
    ``too_deeply_nested``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``raw`` opens more than ``limit`` arrays/objects inside one another (read lexically,
    without decoding, so it is safe on any input; it stops at the first level past the limit)."""
    depth = 0
    for match in _JSON_STRUCTURE.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def decode_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The one way a service reads a JSON request body (SNAP included): ``JsonBodyError`` for a body
    nested deeper than ``max_depth``, for bytes that are not JSON (bad UTF-8, syntax, integers past
    Python's digit limit) and for text no database column can hold (NUL characters, lone
    surrogates from ``\\ud800`` escapes)."""
    if json_depth_exceeds(raw, max_depth):
        raise JsonBodyError("too_deeply_nested", f"JSON nested deeper than {max_depth} levels")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise JsonBodyError("malformed_json", f"request body is not valid JSON: {exc}") from None
    _check_text(data)
    return data


def _check_text(value: Any) -> None:
    """Refuse strings PostgreSQL cannot store (recursion bounded by the depth check)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise JsonBodyError("malformed_json", "strings may not contain the NUL character (\\u0000)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JsonBodyError("malformed_json", "strings may not contain lone surrogates (e.g. \\ud800)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


async def read_json(request: web.Request, model: type[T]) -> T:
    """Parse and validate a JSON body: 400 ``malformed_json`` / ``too_deeply_nested``, 422
    ``invalid_request``."""
    raw = await request.read()
    try:
        data = decode_json(raw) if raw else None
    except JsonBodyError as exc:
        raise ApiError(400, exc.code, exc.message) from None
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


DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (*DATABASE_OUTAGE, OSError)
"""Errors that mean the database is out of reach (down, restarting, out of connections): 503, not 500.
Whole classes, not leaves (``db.DATABASE_OUTAGE``, which consumers wait out too): SQLSTATE classes
08, 57, 53 and 58; ``InterfaceError`` and
``InternalClientError``, what asyncpg raises for a connection closed under a query or a transaction;
and ``OSError``, the socket itself. The last is what slipped through in ``make chaos`` (one
``GET /v1/orders/{id}`` answered 500 while PostgreSQL restarted): a pool replacing a dead connection
connects again, and a server going down or coming up hangs up during the handshake, which asyncpg
raises as the builtin ``ConnectionError``/``ConnectionResetError`` (not ``ConnectionRefusedError``,
the only one listed then); ``TimeoutError`` (a connect or command timeout) is an ``OSError`` too."""

UNSHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

SHED_EARLY = "shed_early"
"""Attribute of a route's handler (``runtime.Router.add(..., shed_early=...)``): a check taking the
request, raising a shed ``ApiError`` (e.g. ``Admission.shed_early``), that the middleware runs
before anything else is done for the request: no span, no latency sample, no body read, no token
verified. A request shed there costs the HTTP parsing, this arithmetic and a small answer."""

ShedEarly = Callable[[web.Request], None]


BUSY_MAX_RETRY_AFTER_S = 30
"""Default longest ``Retry-After`` of a ``503 busy`` (``admission_busy_max_retry_after_s``)."""
HOLD_SMOOTHING = 0.1
"""Weight of the newest time a request was in flight (or held a slot) in its moving average."""


def smoothed(average: float, sample: float, weight: float = HOLD_SMOOTHING) -> float:
    """The exponentially weighted moving average with ``sample`` added (the first sample as it is)."""
    return sample if average == 0 else weight * sample + (1 - weight) * average


PARKING: web.RequestKey[Callable[[int], None]] = web.RequestKey("emeterai.parking")
"""Set by ``make_middlewares`` on every request it counts: ``parking(-1)`` takes the request out of
the process's in-flight count, ``parking(+1)`` puts it back (``parked``)."""


@contextlib.contextmanager
def parked(request: web.Request) -> Iterator[None]:
    """``with parked(request):`` around a wait that does no work (a long poll waiting for a change):
    the request leaves the process's in-flight count (``max_in_flight``) meanwhile, and the time
    spent there is left out of the time requests are in flight (the ``503 busy`` answers' rate) and
    out of its latency (``emeterai_http_request_seconds``: what the server took, not what the
    client chose to wait). A caller bounds how many requests it parks."""
    parking = request.get(PARKING)
    if parking is None:
        yield
        return
    parking(-1)
    try:
        yield
    finally:
        parking(+1)


def make_middlewares(service: str, max_in_flight: int = 0, *, busy_max_retry_after_s: int = BUSY_MAX_RETRY_AFTER_S,
                     clock: Callable[[], float] = time.monotonic) -> list[Any]:
    """Observation (span, counters, latency) and, with ``max_in_flight``, a cap on the requests one
    process answers at once: past it, ``503 busy`` at once (probes and metrics are never refused),
    so a flood queues nowhere inside the process. The refused are told to come back spread out at
    the rate the process answers (``max_in_flight`` over the average time a request is in flight,
    ``ComeBackLine``), not all after one second."""
    in_flight = IN_FLIGHT.labels(service)
    busy = 0
    hold_s = 0.0
    come_back = ComeBackLine(busy_max_retry_after_s, clock)
    early_sheds: dict[tuple[str, str, int], tuple[Any, Any]] = {}
    """The shed and request counters of (route, method, status), looked up once (labels() is not free)."""
    spans = tracer()  # get_tracer per request costs more than the span itself when nothing records it

    @web.middleware
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal busy, hold_s
        if max_in_flight and busy >= max_in_flight and request.path not in UNSHED_PATHS:
            SHED.labels(service, _route_name(request), "503").inc()
            retry = come_back.tell(max_in_flight / hold_s if hold_s > 0 else 0.0)
            return shed_response(503, "busy", f"this server is answering too many requests: come back in {retry} s",
                                 retry)
        early: ShedEarly | None = getattr(request.match_info.handler, SHED_EARLY, None)
        if early is not None:
            try:
                early(request)
            except ApiError as exc:
                key = (_route_name(request), request.method, exc.status)
                counters = early_sheds.get(key)
                if counters is None:
                    route, method, status = key
                    counters = early_sheds[key] = (SHED.labels(service, route, str(status)),
                                                   HTTP_REQUESTS.labels(service, route, method, str(status)))
                for counter in counters:
                    counter.inc()
                return _error_of(exc)
        busy += 1
        in_flight.set(busy)
        started = clock()
        parked_s = 0.0
        parked_at = 0.0

        def parking(step: int) -> None:
            nonlocal busy, parked_s, parked_at
            busy += step
            in_flight.set(busy)
            if step < 0:
                parked_at = clock()
            else:
                parked_s += clock() - parked_at

        request[PARKING] = parking
        try:
            return await _observed(request, handler, lambda: parked_s)
        finally:
            busy -= 1
            in_flight.set(busy)
            held = clock() - started - parked_s
            hold_s = smoothed(hold_s, held)

    async def _observed(request: web.Request, handler: Any, parked_for: Callable[[], float]) -> web.StreamResponse:
        route = _route_name(request)
        started = clock()
        status = 500
        with spans.start_as_current_span(
            f"{request.method} {route}",
            context=extract_context(request.headers),
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
                    HTTP_LATENCY.labels(service, route, request.method).observe(clock() - started - parked_for())

    return [observe]


async def _answer(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return _error_of(exc)
    except RequestPayloadError:  # e.g. a Content-Encoding: gzip body that is not gzip
        return error_response(400, "malformed_body", "the request body cannot be decoded as its Content-Encoding "
                                                     "says")
    except DATABASE_UNAVAILABLE as exc:
        log.warning("database unavailable in %s %s: %r", request.method, request.path, exc)
        return shed_response(503, "unavailable", "the service cannot reach its database right now; retry shortly", 2)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "http_error")
        if exc.status in SHED_STATUSES:
            return shed_response(exc.status, code, exc.reason, _seconds(exc.headers.get("Retry-After")))
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, exc.reason, headers=headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; it has been logged")


def _seconds(header: str | None, default: int = 1) -> int:
    return int(header) if header is not None and header.isdigit() else default


RETRY_AFTER_HEADER = {"Retry-After": {"description": "seconds to wait before trying again", "required": True,
                                      "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
"""Every 429 and every 503 in the platform's error format carries it (rate limits, admission, busy,
database unavailable)."""


@dataclass
class Operation:
    """One documented route. ``document()`` adds what every route of the kernel can answer besides
    its own statuses: 503 ``busy``/``unavailable`` (Retry-After) everywhere but the probes, 413 and
    400 where there is a body, 401 where there are credentials."""

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
    request_encoding: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-part encoding of a multipart body, e.g. ``{"file": {"contentType": "application/pdf"}}``."""
    links: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """OpenAPI links by status: where a response's ids lead (``{"GetOrder": {"operationId": ...,
    "parameters": {"order_id": "$response.body#/order_id"}}}``), for clients and stateful fuzzers."""
    operation_id: str | None = None
    """Default: the method and path, e.g. ``get_v1_orders_order_id``."""
    oversize_status: int | None = 413
    """What a body past the server's limit gets (SNAP answers it as a 400 of its own format)."""
    headers: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Response headers by status besides the kernel's (``Retry-After`` of a shed answer), as OpenAPI
    header objects, e.g. ``{503: {"Set-Cookie": {"description": ..., "schema": {"type": "string"}}}}``."""
    media: dict[int, str] = field(default_factory=dict)
    """Statuses answered with a body that is not JSON, by media type (e.g. ``{200: "application/pdf"}``).
    When the status also names a model, it answers either (content negotiation on ``Accept``,
    ``preferred_media_type``): this media type, or the model as ``application/json``."""

    @property
    def id(self) -> str:
        if self.operation_id is not None:
            return self.operation_id
        return re.sub(r"[^a-z0-9]+", "_", f"{self.method} {self.path}".lower()).strip("_")

    def all_responses(self) -> dict[int, tuple[str, type[BaseModel] | None]]:
        responses = dict(self.responses)
        if self.webhook:
            return responses
        if self.path not in UNSHED_PATHS:
            responses.setdefault(503, ("busy (this process is at its in-flight limit; Retry-After counts the "
                                       "callers refused before, so returns are spread at the rate it answers) or "
                                       "unavailable (the database is out of reach); Retry-After", None))
        if self.request is not None:
            responses.setdefault(400, ("malformed body (code malformed_json, too_deeply_nested, malformed_form, "
                                       "or malformed_body: a Content-Encoding it is not in)", None))
            if self.oversize_status is not None:
                responses.setdefault(self.oversize_status, ("the body is larger than this server accepts", None))
        if self.security:
            responses.setdefault(401, ("missing or invalid credentials", None))
        return responses


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="stable machine code")
    message: str = Field(description="for people")


class ErrorBody(BaseModel):
    """Every error of the platform's own API (SNAP answers in its own format)."""

    error: ErrorDetail


class ShedDetail(ErrorDetail):
    retry_after_s: int = Field(ge=1, description="seconds to wait before trying again (the Retry-After header)")
    retry_at: datetime = Field(description="ISO 8601 UTC time from which to try again: now + retry_after_s")


class ShedBody(BaseModel):
    """Every 429 and 503 of the platform's own API (``shed``): come back after ``retry_after_s``."""

    error: ShedDetail


JSON_VALUE = "JsonValue"
_JSON_VALUE_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "description": "any JSON value without NUL characters (a field the model does not name: ignored)",
    "anyOf": [{"type": ["null", "boolean", "number"]}, {"type": "string", "pattern": NO_NUL},
              {"type": "array", "items": _JSON_VALUE_REF},
              {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": _JSON_VALUE_REF}],
}


def _request_schema(schema: Any, *, json_body: bool) -> None:
    """What the readers do beyond the model, said in its schema: free-text strings refuse NUL
    (``decode_json``, ``read_form``); in a JSON body, so do names, and fields a model does not name
    are ignored unless it forbids them (``additionalProperties``: any NUL-free JSON)."""
    if isinstance(schema, list):
        for item in schema:
            _request_schema(item, json_body=json_body)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if (kind == "string" or (isinstance(kind, list) and "string" in kind)) and not (
            {"pattern", "enum", "const", "format"} & set(schema)):
        schema["pattern"] = NO_NUL
    if json_body and (kind == "object" or "properties" in schema):
        schema.setdefault("propertyNames", {"pattern": NO_NUL})
        if schema.get("additionalProperties", True) is True:
            schema["additionalProperties"] = _JSON_VALUE_REF
    for key in ("properties", "$defs"):
        for sub in schema.get(key, {}).values():
            _request_schema(sub, json_body=json_body)
    for key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "not"):
        _request_schema(schema.get(key), json_body=json_body)


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

        def ref(model: type[BaseModel], *, request: str | None = None) -> dict[str, str]:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            if request is not None:
                json_body = request == "application/json"
                _request_schema(schema, json_body=json_body)
                if json_body:
                    schemas[JSON_VALUE] = JSON_VALUE_SCHEMA
                else:  # other parts of a form are skipped unread, if their headers can be read
                    schema.setdefault("additionalProperties", True)
                    schema.setdefault("propertyNames", {"pattern": PART_NAME})
            for name, sub in schema.pop("$defs", {}).items():
                # a model both sent and answered keeps its request constraints (answers hold no NUL)
                if request is not None:
                    schemas[name] = sub
                else:
                    schemas.setdefault(name, sub)
            schemas[model.__name__] = schema
            return {"$ref": f"#/components/schemas/{model.__name__}"}

        paths: dict[str, dict[str, Any]] = {}
        webhooks: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            entry: dict[str, Any] = {"summary": op.summary, "responses": {}}
            if not op.webhook:
                entry["operationId"] = op.id
            if op.tags:
                entry["tags"] = op.tags
            if op.parameters:
                entry["parameters"] = op.parameters
            if op.security:
                entry["security"] = [{name: []} for name in op.security]
            if op.request is not None:
                media: dict[str, Any] = {"schema": ref(op.request, request=op.request_content_type)}
                if op.request_encoding:
                    media["encoding"] = op.request_encoding
                entry["requestBody"] = {"required": True, "content": {op.request_content_type: media}}
            for status, (desc, model) in sorted(op.all_responses().items()):
                resp: dict[str, Any] = {"description": desc}
                body_model = model or (ErrorBody if status >= 400 else None)
                shed_answer = status in SHED_STATUSES and body_model is ErrorBody
                if shed_answer:
                    body_model = ShedBody
                if status in op.media:
                    media_type = op.media[status]
                    any_body: dict[str, Any] = {} if media_type.endswith("json") else {"type": "string"}
                    resp["content"] = {media_type: {"schema": any_body}}
                    if model is not None and media_type != "application/json":
                        resp["content"]["application/json"] = {"schema": ref(model)}
                elif body_model is not None:
                    resp["content"] = {"application/json": {"schema": ref(body_model)}}
                if shed_answer or status in op.headers:
                    resp["headers"] = {**(RETRY_AFTER_HEADER if shed_answer else {}), **op.headers.get(status, {})}
                if status in op.links:
                    resp["links"] = op.links[status]
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
                           responses={200: ("metrics", None)}, tags=["operations"], media={200: "text/plain"}))
        spec.add(Operation("GET", "/openapi.json", "This document",
                           responses={200: ("OpenAPI document", None)}, tags=["operations"],
                           media={200: "application/json"}))


def create_app(service: str, *, max_body_bytes: int, max_in_flight: int = 0,
               trusted_proxies: TrustedProxies | None = None,
               busy_max_retry_after_s: int = BUSY_MAX_RETRY_AFTER_S) -> web.Application:
    """An api's application; behind ``trusted_proxies`` each client is known by its own address
    (``emeterai_shared.forwarded``)."""
    middlewares = make_middlewares(service, max_in_flight, busy_max_retry_after_s=busy_max_retry_after_s)
    if trusted_proxies:
        middlewares.insert(0, forwarded_middleware(trusted_proxies))
    return web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
