"""Schemathesis hooks for ``tests/test_fuzz.py`` (loaded by the ``st`` CLI through ``SCHEMATHESIS_HOOKS``).

They give the generated requests what a schema cannot say, for the components generated as valid
(positive) only, so that those requests reach the real logic instead of stopping at a check that
the fuzzer cannot satisfy by chance; a component generated as invalid is sent as generated:

* SNAP routes (an auth provider, so that the checks know the credentials are real): signed with the
  development bank's keys (``FUZZ_BANK``: its config and private key), as the bank would: the B2B
  token request with its RSA key, transactions with a token of ours and HMAC-SHA512 over the exact
  bytes sent, a fresh ``X-EXTERNAL-ID`` each time; a VA number made of the generated
  ``partnerServiceId`` + ``customerNo`` (a relation JSON Schema cannot state).
* ``Idempotency-Key``: a fresh key per request (a fuzzer reusing "0" with another body is a 422
  by design; reuse is tested on purpose elsewhere).
* ``POST /v1/stampings`` and ``POST /v1/verify``: the ``file`` part is a real PDF (``FUZZ_PDF``), and
  the stamp is placed inside its pages (a page count and page size are not schema facts).
* ``GET /v1/orders`` and ``GET /v1/stampings``: a ``cursor`` is a key the list encoded (an opaque
  token, not a schema fact): a generated valid one becomes a real cursor (a random key).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import schemathesis
from emeterai_shared.pagination import Key, encode_cursor
from payment_service.adapters.snap.signatures import format_snap_timestamp, sign_access_token, sign_transaction
from schemathesis.core import NotSet
from schemathesis.core.parameters import ParameterLocation
from schemathesis.transport.serialization import Binary

TOKEN_PATH = "/snap/v1.0/access-token/b2b"
TOKEN_REFRESH_S = 600
PDF_PAGES = 3
A4 = (595.0, 842.0)

_lock = threading.Lock()
_token: dict[str, Any] = {}
_external_ids = itertools.count(int(time.time()) * 1000)


def _bank() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(os.environ["FUZZ_BANK"]).read_text())
    return data


def _positive(case: schemathesis.Case, location: ParameterLocation) -> bool:
    """Whether ``location`` was generated as valid (a case with no word on it: as the case was)."""
    meta = case.meta
    if meta is None:
        return True
    if location in meta.components:
        return not meta.components[location].mode.is_negative
    return not meta.generation.mode.is_negative


def _access_token(bank: dict[str, Any]) -> str:
    """A live token of ours, fetched once (and again before it expires)."""
    with _lock:
        if _token and time.monotonic() - _token["at"] < TOKEN_REFRESH_S:
            return str(_token["value"])
        config = bank["config"]
        timestamp = format_snap_timestamp()
        headers = {"Content-Type": "application/json", "X-TIMESTAMP": timestamp, "X-CLIENT-KEY": config["client_id"],
                   "X-SIGNATURE": sign_access_token(bank["private_key_pem"], config["client_id"], timestamp)}
        answer = requests.post(bank["base_url"] + TOKEN_PATH, data=b'{"grantType":"client_credentials"}',
                               headers=headers, timeout=30)
        answer.raise_for_status()
        _token.update(value=answer.json()["accessToken"], at=time.monotonic())
        return str(_token["value"])


def _sign_snap(case: schemathesis.Case) -> None:
    """The development bank's credentials on a SNAP request: the RSA signature of the token request; on
    a transaction, our access token and the HMAC-SHA512 signature over the body exactly as the fuzzer
    serializes it (``json.dumps``). Header parameters generated as valid are replaced by what the
    bank sends (a current X-TIMESTAMP, its X-PARTNER-ID, a fresh X-EXTERNAL-ID); invalid ones are
    kept, and signed as they are."""
    bank = _bank()
    config = bank["config"]
    body = case.body
    if _positive(case, ParameterLocation.BODY) and isinstance(body, dict):
        psid, customer_no = body.get("partnerServiceId"), body.get("customerNo")
        if isinstance(psid, str) and isinstance(customer_no, str):
            body["virtualAccountNo"] = psid + customer_no
    headers = case.headers if case.headers is not None else {}
    if _positive(case, ParameterLocation.HEADER):
        headers.update({"X-TIMESTAMP": format_snap_timestamp(), "X-CLIENT-KEY": config["client_id"],
                        "X-PARTNER-ID": config["client_id"], "X-EXTERNAL-ID": str(next(_external_ids)),
                        "CHANNEL-ID": str(config["channel_id"])})
    timestamp = str(headers.get("X-TIMESTAMP", ""))
    if case.operation.path == TOKEN_PATH:
        headers["X-SIGNATURE"] = sign_access_token(bank["private_key_pem"], config["client_id"], timestamp)
    else:
        token = _access_token(bank)
        try:
            raw = b"" if isinstance(body, NotSet) else json.dumps(body).encode()
            signature = sign_transaction(config["client_secret"], case.method.upper(), case.formatted_path,
                                         token, raw, timestamp)
        except (TypeError, ValueError):  # not JSON: the server refuses it before reading any signature
            signature = "unsigned"
        headers.update({"Authorization": f"Bearer {token}", "X-SIGNATURE": signature})
    case.headers = headers


def _real_pdf(case: schemathesis.Case) -> None:
    body = case.body
    if not isinstance(body, dict) or not _positive(case, ParameterLocation.BODY):
        return
    # Binary: how schemathesis holds generated binary strings
    body["file"] = Binary(Path(os.environ["FUZZ_PDF"]).read_bytes())
    if case.operation.path == "/v1/stampings":
        size = min(float(body.get("size", 100)), 200.0)
        body["size"] = size
        body["page"] = (int(body.get("page", 1)) - 1) % PDF_PAGES + 1
        body["x"] = float(body["x"]) % (A4[0] - size)
        body["y"] = float(body["y"]) % (A4[1] - size)


LISTS = ("/v1/orders", "/v1/stampings")


def _real_cursor(case: schemathesis.Case) -> None:
    query = case.query
    if isinstance(query, dict) and "cursor" in query and _positive(case, ParameterLocation.QUERY):
        when = datetime.now(UTC) - timedelta(seconds=len(str(query["cursor"])))
        query["cursor"] = encode_cursor(Key(when, uuid.uuid4()))


def _schemes(case: schemathesis.Case) -> set[str]:
    return {name for requirement in case.operation.definition.raw.get("security", []) for name in requirement}


@schemathesis.auth(refresh_interval=None, retry_on=[])
class Platform:
    """Every credential and every fact the schemas cannot state, written when a case is generated (so
    the checks take them as the case's own, and know the credentials are real): a buyer's bearer
    token (``FUZZ_TOKEN``) where the operation takes one, else a partner's ``X-Api-Key``
    (``FUZZ_API_KEY``); the bank's signatures on SNAP routes; a real PDF to upload or verify."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return "platform"

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        path = case.operation.path
        if path.startswith("/snap/"):
            _sign_snap(case)
            return
        if path in ("/v1/stampings", "/v1/verify") and case.method.upper() == "POST":
            _real_pdf(case)
        if path in LISTS and case.method.upper() == "GET":
            _real_cursor(case)
        schemes = _schemes(case)
        headers = case.headers if case.headers is not None else {}
        if "bearer" in schemes:
            headers["Authorization"] = f"Bearer {os.environ['FUZZ_TOKEN']}"
        elif "apiKey" in schemes:
            headers["X-Api-Key"] = os.environ["FUZZ_API_KEY"]
        case.headers = headers


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    if case.headers and "Idempotency-Key" in case.headers and _positive(case, ParameterLocation.HEADER):
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
