import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from payment_service.adapters.snap.signatures import (
    body_sha256_hex,
    format_snap_timestamp,
    minify_json,
    parse_snap_timestamp,
    sign_access_token,
    sign_transaction,
    string_to_sign,
    timestamp_within,
    verify_access_token_signature,
    verify_transaction_signature,
)

TS = "2024-09-04T10:00:00+07:00"
PATH = "/snap/v1.0/transfer-va/payment"
SECRET = "s3cret"
TOKEN = "tok-123"
BODY = b'{"a":1}'
# sha256(b'{"a":1}'), computed independently.
BODY_HASH = "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pems(key: rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_minify_pretty_and_compact_are_equivalent() -> None:
    pretty = b'{\n  "a" : 1,\n  "b" : [ 1, 2 ],\n  "c" : "x y  z",\n  "d": {"e": null}\n}\n'
    compact = b'{"a":1,"b":[1,2],"c":"x y  z","d":{"e":null}}'
    assert minify_json(pretty) == compact
    assert body_sha256_hex(pretty) == body_sha256_hex(compact) == hashlib.sha256(compact).hexdigest()


def test_minify_keeps_key_order_and_non_ascii() -> None:
    assert minify_json('{"z": "é", "a": 1}'.encode()) == '{"z":"é","a":1}'.encode()


def test_minify_empty_and_invalid() -> None:
    assert minify_json(b"") == b""
    assert body_sha256_hex(b"  ") == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ValueError):
        minify_json(b"{not json")
    with pytest.raises(ValueError):
        minify_json(b"[" * 100_000)


def test_string_to_sign_known_answer() -> None:
    expected = f"POST:{PATH}:{TOKEN}:{BODY_HASH}:{TS}"
    assert string_to_sign("post", PATH, TOKEN, b'{ "a": 1 }', TS) == expected


def test_sign_transaction_known_answer() -> None:
    message = f"POST:{PATH}:{TOKEN}:{BODY_HASH}:{TS}".encode()
    mac = hmac.new(SECRET.encode(), message, hashlib.sha512).digest()
    expected = base64.b64encode(mac).decode()
    assert sign_transaction(SECRET, "POST", PATH, TOKEN, BODY, TS) == expected
    assert verify_transaction_signature(SECRET, "POST", PATH, TOKEN, BODY, TS, expected)


def test_transaction_signature_survives_reformatting() -> None:
    sig = sign_transaction(SECRET, "POST", PATH, TOKEN, BODY, TS)
    assert verify_transaction_signature(SECRET, "POST", PATH, TOKEN, b'{\n  "a": 1\n}', TS, sig)


@pytest.mark.parametrize(
    ("secret", "method", "path", "token", "body", "ts"),
    [
        ("other", "POST", PATH, TOKEN, BODY, TS),
        (SECRET, "GET", PATH, TOKEN, BODY, TS),
        (SECRET, "POST", "/v1.0/transfer-va/payment", TOKEN, BODY, TS),
        (SECRET, "POST", PATH, "tok-124", BODY, TS),
        (SECRET, "POST", PATH, TOKEN, b'{"a":2}', TS),
        (SECRET, "POST", PATH, TOKEN, BODY, "2024-09-04T10:00:01+07:00"),
    ],
)
def test_tampered_transaction_fails(secret: str, method: str, path: str, token: str, body: bytes, ts: str) -> None:
    sig = sign_transaction(SECRET, "POST", PATH, TOKEN, BODY, TS)
    assert not verify_transaction_signature(secret, method, path, token, body, ts, sig)


@pytest.mark.parametrize("garbage", ["", "!!!", "not base64 at all", "é", "AAAA", "QQ=="])
def test_garbage_transaction_signature_is_false(garbage: str) -> None:
    assert verify_transaction_signature(SECRET, "POST", PATH, TOKEN, BODY, TS, garbage) is False


def test_transaction_signature_over_invalid_body_is_false() -> None:
    sig = sign_transaction(SECRET, "POST", PATH, TOKEN, BODY, TS)
    assert verify_transaction_signature(SECRET, "POST", PATH, TOKEN, b"{x", TS, sig) is False


def test_access_token_signature_known_answer(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem, public_pem = _pems(rsa_key)
    raw = rsa_key.sign(b"bank-1|" + TS.encode(), padding.PKCS1v15(), hashes.SHA256())
    expected = base64.b64encode(raw).decode()
    assert sign_access_token(private_pem, "bank-1", TS) == expected
    assert verify_access_token_signature(public_pem, "bank-1", TS, expected)
    assert verify_access_token_signature(public_pem.decode(), "bank-1", TS, expected)
    assert verify_access_token_signature(rsa_key.public_key(), "bank-1", TS, expected)


def test_access_token_signature_tampered(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem, public_pem = _pems(rsa_key)
    sig = sign_access_token(private_pem, "bank-1", TS)
    assert not verify_access_token_signature(public_pem, "bank-2", TS, sig)
    assert not verify_access_token_signature(public_pem, "bank-1", "2024-09-04T10:00:01+07:00", sig)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not verify_access_token_signature(_pems(other)[1], "bank-1", TS, sig)


def test_access_token_garbage_is_false(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem, public_pem = _pems(rsa_key)
    sig = sign_access_token(private_pem, "bank-1", TS)
    ec_public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert verify_access_token_signature(public_pem, "bank-1", TS, "%%%") is False
    assert verify_access_token_signature(public_pem, "bank-1", TS, "") is False
    assert verify_access_token_signature(public_pem, "bank-1", TS, "é") is False
    assert verify_access_token_signature(b"not a pem", "bank-1", TS, sig) is False
    assert verify_access_token_signature(ec_public, "bank-1", TS, sig) is False
    assert verify_access_token_signature(private_pem, "bank-1", TS, sig) is False


def test_sign_access_token_rejects_non_rsa_key() -> None:
    ec_private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(TypeError):
        sign_access_token(ec_private, "bank-1", TS)


def test_parse_timestamp() -> None:
    parsed = parse_snap_timestamp(TS)
    assert parsed == datetime(2024, 9, 4, 3, 0, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(hours=7)
    assert parse_snap_timestamp("2024-09-04T03:00:00.123Z").tzinfo is not None


@pytest.mark.parametrize("bad", ["2024-09-04T10:00:00", "yesterday", "", "2024-13-01T00:00:00+07:00"])
def test_parse_timestamp_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_snap_timestamp(bad)


def test_timestamp_skew() -> None:
    now = datetime(2024, 9, 4, 3, 0, tzinfo=UTC)
    ts = parse_snap_timestamp(TS)
    assert timestamp_within(ts, now)
    assert timestamp_within(ts, now + timedelta(minutes=5))
    assert timestamp_within(ts, now - timedelta(minutes=5))
    assert not timestamp_within(ts, now + timedelta(minutes=5, seconds=1))
    assert not timestamp_within(ts, now - timedelta(minutes=5, seconds=1))
    assert timestamp_within(ts, now + timedelta(minutes=9), skew=timedelta(minutes=10))


def test_format_timestamp() -> None:
    utc = datetime(2024, 9, 4, 3, 0, 0, 999_999, tzinfo=UTC)
    assert format_snap_timestamp(utc) == TS
    assert format_snap_timestamp(utc, UTC) == "2024-09-04T03:00:00+00:00"
    assert parse_snap_timestamp(format_snap_timestamp()).utcoffset() == timedelta(hours=7)
    with pytest.raises(ValueError):
        format_snap_timestamp(datetime(2024, 9, 4))
