"""Keyset cursors (``emeterai_shared.pagination``) and the one shed answer (``emeterai_shared.http.shed``).

* a cursor round-trips its key, is URL-safe without padding; anything else is 400 ``invalid_cursor``;
* ``page_of`` cuts the extra row and points ``next`` at the page's last key (None on the last page);
* ``?limit=`` 1..100 (default 20), else 422 ``invalid_limit``;
* ``shed``: 429/503 only, ``Retry-After`` = ``retry_after_s`` (whole seconds, at least 1) and
  ``retry_at`` = now + that, in UTC; admission and rate limits answer through it.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aiohttp.test_utils import make_mocked_request
from emeterai_shared.admission import Admission, AdmissionSettings, Sample
from emeterai_shared.http import ApiError, retry_at, shed
from emeterai_shared.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Key,
    decode_cursor,
    encode_cursor,
    page_of,
    page_request,
)
from emeterai_shared.ratelimit import RateLimiter

KEY = Key(datetime(2026, 12, 6, 15, 40, 7, 123456, tzinfo=UTC), uuid.UUID("0b7f4f52-3c1e-4d7e-9a55-6b0e2f1c8d40"))


def test_a_cursor_round_trips_its_key_and_is_url_safe() -> None:
    cursor = encode_cursor(KEY)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    assert decode_cursor(cursor) == KEY
    other_zone = Key(KEY.created_at.astimezone(timezone(timedelta(hours=7))), KEY.id)
    assert decode_cursor(encode_cursor(other_zone)).created_at == KEY.created_at


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "", "garbage", "!!", "x" * 500, _b64(b"not json"), _b64(b"[]"), _b64(b'{"t": 1, "id": "x"}'),
    _b64(json.dumps({"t": "2026-12-06T15:40:07", "id": str(KEY.id)}).encode()),  # no time zone
    _b64(json.dumps({"t": "yesterday", "id": str(KEY.id)}).encode()),
    _b64(json.dumps({"t": KEY.created_at.isoformat(), "id": "not-a-uuid"}).encode()),
    _b64(b"\xff\xfe"), _b64(b"[" * 150),
])
def test_anything_else_is_an_invalid_cursor(cursor: str) -> None:
    with pytest.raises(ApiError) as refused:
        decode_cursor(cursor)
    assert (refused.value.status, refused.value.code) == (400, "invalid_cursor")


def test_page_of_cuts_the_extra_row_and_points_next_at_the_last_key() -> None:
    keys = [Key(KEY.created_at - timedelta(seconds=i), uuid.uuid4()) for i in range(4)]
    page, cursor = page_of(keys, 3, lambda k: k)
    assert page == keys[:3] and cursor is not None and decode_cursor(cursor) == keys[2]
    assert page_of(keys[:3], 3, lambda k: k) == (keys[:3], None)
    assert page_of([], 3, lambda k: k) == ([], None)


@pytest.mark.parametrize(("query", "limit"), [("", DEFAULT_LIMIT), ("?limit=1", 1), (f"?limit={MAX_LIMIT}", MAX_LIMIT)])
def test_limit_defaults_and_bounds(query: str, limit: int) -> None:
    request = page_request(make_mocked_request("GET", f"/v1/orders{query}"))
    assert (request.limit, request.after) == (limit, None)


@pytest.mark.parametrize("limit", ["0", str(MAX_LIMIT + 1), "-1", "ten", "1.5", "", "00001000"])
def test_a_bad_limit_is_invalid_limit(limit: str) -> None:
    with pytest.raises(ApiError) as refused:
        page_request(make_mocked_request("GET", f"/v1/orders?limit={limit}"))
    assert (refused.value.status, refused.value.code) == (422, "invalid_limit")


def test_shed_says_when_to_come_back() -> None:
    before = datetime.now(UTC)
    answer = shed(503, "overloaded", "at capacity", 6.2)
    assert (answer.status, answer.code, answer.headers) == (503, "overloaded", {"Retry-After": "7"})
    assert answer.extra["retry_after_s"] == 7
    at = datetime.fromisoformat(answer.extra["retry_at"])
    assert answer.extra["retry_at"].endswith("Z") and at.utcoffset() == timedelta(0)
    assert before.replace(microsecond=0) + timedelta(seconds=7) <= at <= datetime.now(UTC) + timedelta(seconds=7)
    assert shed(429, "rate_limited", "slow down", 0).extra["retry_after_s"] == 1
    assert retry_at(5, datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:05Z"
    with pytest.raises(ValueError):
        shed(409, "conflict", "not a shed answer", 1)


def test_admission_and_rate_limits_answer_through_shed() -> None:
    limiter = RateLimiter(0.5, 1, clock=lambda: 0.0)
    limiter.enforce("someone")
    with pytest.raises(ApiError) as limited:
        limiter.enforce("someone")
    assert limited.value.status == 429 and set(limited.value.extra) == {"retry_after_s", "retry_at"}
    assert limited.value.headers["Retry-After"] == str(limited.value.extra["retry_after_s"]) == "2"

    async def probe(_: object) -> Sample:
        raise AssertionError("not sampled here")

    admission = Admission("test", probe, AdmissionSettings(min_limit=1), clock=lambda: 0.0)
    admission.observe(Sample(backlog=100, drained=10, window_s=10.0))  # limit: 1/s x 30 s
    with pytest.raises(ApiError) as overloaded:
        admission.admit()
    assert (overloaded.value.status, overloaded.value.code) == (503, "overloaded")
    assert overloaded.value.headers["Retry-After"] == str(overloaded.value.extra["retry_after_s"])
    assert overloaded.value.extra["retry_at"] in overloaded.value.message
