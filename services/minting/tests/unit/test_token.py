"""Stamp tokens: compact Ed25519 JWS that verify offline and fail on any tampering."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from uuid import uuid4

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from minting_service.domain.serial import generate
from minting_service.domain.token import InvalidStampToken, StampSigner, jwk, verify_token

NOW = datetime(2024, 9, 4, 10, 0, tzinfo=UTC)
QR_VERSION_12_M_BYTES = 287


@pytest.fixture(scope="module")
def signer() -> StampSigner:
    return StampSigner(Ed25519PrivateKey.generate())


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_token_carries_the_short_claims_and_verifies(signer: StampSigner) -> None:
    sn, order_id = generate("AB"), uuid4()
    token = signer.sign(sn, order_id, NOW)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": signer.kid}
    claims = verify_token(token, {signer.kid: signer.public_key})
    assert claims == {"sn": sn, "fv": 10_000, "ord": str(order_id), "iat": int(NOW.timestamp())}
    assert len(token) <= QR_VERSION_12_M_BYTES and token.isascii()


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_a_flipped_byte_anywhere_fails(signer: StampSigner, segment: int) -> None:
    token = signer.sign(generate(), uuid4(), NOW)
    parts = token.split(".")
    for position in (0, len(_b64decode(parts[segment])) // 2, len(_b64decode(parts[segment])) - 1):
        raw = bytearray(_b64decode(parts[segment]))
        raw[position] ^= 0x01
        tampered = ".".join(_b64encode(bytes(raw)) if i == segment else p for i, p in enumerate(parts))
        with pytest.raises(InvalidStampToken):
            verify_token(tampered, {signer.kid: signer.public_key})


def test_changed_claims_fail(signer: StampSigner) -> None:
    header, payload, signature = signer.sign(generate(), uuid4(), NOW).split(".")
    claims = json.loads(_b64decode(payload))
    claims["fv"] = 100_000
    with pytest.raises(InvalidStampToken):
        verify_token(f"{header}.{_b64encode(json.dumps(claims).encode())}.{signature}",
                     {signer.kid: signer.public_key})


def test_an_unknown_kid_fails(signer: StampSigner) -> None:
    other = StampSigner(Ed25519PrivateKey.generate())
    token = other.sign(generate(), uuid4(), NOW)
    with pytest.raises(InvalidStampToken, match="unknown key"):
        verify_token(token, {signer.kid: signer.public_key})
    forged = jwt.encode({"sn": generate(), "fv": 10_000, "ord": str(uuid4()), "iat": 1},
                        Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": signer.kid})
    with pytest.raises(InvalidStampToken):  # our kid, someone else's key
        verify_token(forged, {signer.kid: signer.public_key})


def test_garbage_and_incomplete_tokens_fail(signer: StampSigner) -> None:
    keys = {signer.kid: signer.public_key}
    for token in ("", "not.a.token", "eyJhbGciOiJub25lIn0.e30."):
        with pytest.raises(InvalidStampToken):
            verify_token(token, keys)
    key = Ed25519PrivateKey.generate()
    own = StampSigner(key)
    missing = jwt.encode({"sn": generate(), "iat": 1}, key, algorithm="EdDSA", headers={"kid": own.kid})
    with pytest.raises(InvalidStampToken, match="fv"):
        verify_token(missing, {own.kid: own.public_key})
    sn = generate()
    wrong_check = sn[:-1] + ("1" if sn[-1] == "0" else "0")
    with pytest.raises(InvalidStampToken, match="serial"):
        verify_token(signer.sign(wrong_check, uuid4(), NOW), keys)


def test_the_jwk_alone_verifies_tokens(signer: StampSigner) -> None:
    token = signer.sign(generate(), uuid4(), NOW)
    key_set = jwt.PyJWKSet.from_dict({"keys": [jwk(signer.public_key)]})
    assert key_set[signer.kid].algorithm_name == "EdDSA"
    assert verify_token(token, {signer.kid: key_set[signer.kid].key})["fv"] == 10_000
