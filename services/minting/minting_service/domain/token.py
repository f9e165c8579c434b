"""Stamp tokens: the compact Ed25519-signed JWS printed in a stamp's QR code.

A token is a JWS compact serialization (RFC 7515, ``alg`` EdDSA, RFC 8037) with the header
``{"alg": "EdDSA", "kid"}`` (no ``typ``: every byte costs QR modules) and the claims ``sn``,
``fv`` (face value), ``ord`` (order id) and ``iat``. At about 280 ASCII characters it fits a QR
code of version 12 (65x65 modules) at error correction level M (287 bytes). Anyone can verify it offline with the public
keys of ``GET /v1/keys`` (JWK, ``kid`` = ``emeterai_shared.auth.key_id``); a token never
expires, and its ``iat`` is not checked against the verifier's clock.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from emeterai_shared.auth import key_id

from minting_service.domain import serial
from minting_service.domain.stamp import FACE_VALUE

ALGORITHM = "EdDSA"
PURPOSE = "stamp-token"
"""The ``purpose`` member of these keys in ``GET /v1/keys``, beside the PDF signing certificate's."""
CLAIMS = ("sn", "fv", "ord", "iat")


class InvalidStampToken(ValueError):
    """The token is malformed, tampered with, signed by an unknown key or names no valid serial."""


class StampSigner:
    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self.public_key = private_key.public_key()
        self.kid = key_id(self.public_key)

    def sign(self, sn: str, order_id: UUID, issued_at: datetime) -> str:
        claims = {"sn": sn, "fv": FACE_VALUE, "ord": str(order_id), "iat": int(issued_at.timestamp())}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": None})


def verify_token(token: str, public_keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    """The claims of a genuine token; ``InvalidStampToken`` for anything else."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = public_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidStampToken(f"token signed by an unknown key {kid!r}")
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[ALGORITHM],
                                            options={"require": list(CLAIMS), "verify_iat": False})
    except jwt.InvalidTokenError as exc:
        raise InvalidStampToken(f"invalid stamp token: {exc}") from None
    if not isinstance(claims["sn"], str) or not serial.is_valid(claims["sn"]):
        raise InvalidStampToken("the token does not name a valid serial number")
    return claims


def jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as a JSON Web Key (RFC 8037 OKP) for verifying stamp tokens."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
            "kid": key_id(public_key), "alg": ALGORITHM, "use": "sig", "purpose": PURPOSE}
