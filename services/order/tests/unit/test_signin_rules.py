"""Phone sign-in rules (pure: no I/O): codes, their digests and checks, the fixed-window limits,
phones in one form, refresh tokens, and the squatting rule on callers."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from emeterai_shared.auth import Caller, superseded
from emeterai_shared.http import ApiError
from order_service.domain.signin import (
    MAX_WRONG_TRIES,
    CodeCheck,
    Limit,
    PendingCode,
    check_code,
    code_digest,
    code_in,
    code_request_limits,
    exceeded,
    new_code,
    new_refresh_token,
    normalize_phone,
    refresh_digest,
    sms_text,
)

KEY = b"k" * 32
PHONE = "+6281234567890"
NOW = datetime(2024, 9, 3, 10, 0, 7, tzinfo=UTC)


def test_codes_are_six_digits_and_vary() -> None:
    codes = {new_code() for _ in range(200)}
    assert all(re.fullmatch(r"[0-9]{6}", c) for c in codes)
    assert len(codes) > 150


def test_the_digest_is_keyed_and_bound_to_the_phone() -> None:
    digest = code_digest(KEY, PHONE, "123456")
    assert len(digest) == 32
    assert code_digest(b"x" * 32, PHONE, "123456") != digest
    assert code_digest(KEY, "+6281234567891", "123456") != digest
    assert b"123456" not in digest


def pending(code: str = "123456", *, expires_in_s: int = 300, wrong: int = 0) -> PendingCode:
    return PendingCode(code_digest(KEY, PHONE, code), NOW + timedelta(seconds=expires_in_s), wrong)


def test_a_code_is_accepted_only_while_pending_unexpired_and_not_void() -> None:
    assert check_code(KEY, PHONE, "123456", pending(), NOW) is CodeCheck.ACCEPTED
    assert check_code(KEY, PHONE, "654321", pending(), NOW) is CodeCheck.WRONG
    assert check_code(KEY, PHONE, "123456", None, NOW) is CodeCheck.NO_CODE
    assert check_code(KEY, PHONE, "123456", pending(expires_in_s=0), NOW) is CodeCheck.NO_CODE
    assert check_code(KEY, PHONE, "123456", pending(wrong=MAX_WRONG_TRIES - 1), NOW) is CodeCheck.ACCEPTED
    assert check_code(KEY, PHONE, "123456", pending(wrong=MAX_WRONG_TRIES), NOW) is CodeCheck.NO_CODE
    assert MAX_WRONG_TRIES == 5


def test_the_text_holds_the_code_as_its_only_six_digit_number() -> None:
    for code in ("000000", "123456", "999999"):
        text = sms_text(code, 300)
        assert code_in(text) == code
        assert re.findall(r"[0-9]{6}", text) == [code]


def test_phones_take_one_form() -> None:
    assert normalize_phone("+6281234567890") == "+6281234567890"
    assert normalize_phone("081234567890") == "+6281234567890"
    assert normalize_phone("6281234567890") == "+6281234567890"
    assert normalize_phone(" 081234567890 ") == "+6281234567890"


def test_windows_are_fixed_and_retry_after_reaches_their_end() -> None:
    limit = Limit("k", 1, 30)
    assert limit.window_start(NOW) == datetime(2024, 9, 3, 10, 0, 0, tzinfo=UTC)
    assert limit.retry_after_s(NOW) == 23
    hour = Limit("h", 5, 3600)
    assert hour.window_start(NOW) == datetime(2024, 9, 3, 10, tzinfo=UTC)
    assert hour.retry_after_s(NOW) == 3600 - 7
    assert Limit("k", 1, 30).retry_after_s(datetime(2024, 9, 3, 10, 0, 29, 999_000, tzinfo=UTC)) == 1


def test_code_requests_count_per_phone_and_per_client() -> None:
    limits = code_request_limits(PHONE, "10.0.0.1", per_phone=((1, 30), (5, 3600)), per_client=((20, 600),))
    assert [(x.key, x.limit, x.window_s) for x in limits] == [
        (f"otp:phone:{PHONE}:30", 1, 30), (f"otp:phone:{PHONE}:3600", 5, 3600), ("otp:client:10.0.0.1:600", 20, 600)]
    # a limit of 0 (or a window of 0) is off
    assert code_request_limits(PHONE, "c", per_phone=((0, 30), (5, 0)), per_client=((0, 600),)) == []


def test_past_any_limit_the_longest_wait_is_told() -> None:
    limits = code_request_limits(PHONE, "c", per_phone=((1, 30), (5, 3600)), per_client=((20, 600),))
    keys = [x.key for x in limits]
    assert exceeded(limits, {keys[0]: 1, keys[1]: 1, keys[2]: 20}, NOW) is None
    assert exceeded(limits, {keys[0]: 2, keys[1]: 2, keys[2]: 2}, NOW) == 23
    assert exceeded(limits, {keys[0]: 2, keys[1]: 6, keys[2]: 2}, NOW) == 3600 - 7
    assert exceeded(limits, {keys[0]: 1, keys[1]: 1, keys[2]: 21}, NOW) == 600 - 7


def test_refresh_tokens_are_random_and_stored_as_digests() -> None:
    tokens = {new_refresh_token() for _ in range(50)}
    assert len(tokens) == 50
    token = tokens.pop()
    assert len(token) >= 43
    assert refresh_digest(token) == refresh_digest(token) != refresh_digest(token + "x")


def test_a_verified_account_refuses_tokens_without_a_session() -> None:
    account = uuid.uuid4()
    legacy, signed_in, partner = Caller(account, None), Caller(account, None, str(uuid.uuid4())), Caller(account, "p")
    superseded(legacy, None)  # not verified: every token works
    superseded(signed_in, NOW)
    superseded(partner, NOW)
    with pytest.raises(ApiError) as refused:
        superseded(legacy, NOW)
    assert (refused.value.status, refused.value.code) == (401, "token_superseded")


def test_sign_in_tokens_carry_their_session_and_their_own_lifetime() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from emeterai_shared.auth import TokenIssuer, TokenVerifier, key_id

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    issuer = TokenIssuer(pem, timedelta(hours=24))
    verifier = TokenVerifier({key_id(key.public_key()): key.public_key()})
    account = uuid.uuid4()
    legacy = verifier.verify(issuer.issue(account))
    assert (legacy.account_id, legacy.sid) == (account, None)
    signed_in = verifier.verify(issuer.issue(account, sid="s-1", ttl=timedelta(seconds=60)))
    assert (signed_in.account_id, signed_in.sid) == (account, "s-1")
    with pytest.raises(ApiError) as expired:
        verifier.verify(issuer.issue(account, sid="s-1", ttl=timedelta(seconds=-1)))
    assert expired.value.code == "token_expired"
