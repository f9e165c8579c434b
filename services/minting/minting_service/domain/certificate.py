"""The stamping service's PDF signing certificate as a JSON Web Key for ``GET /v1/keys``.

The stamping service signs every stamped PDF with a certificate; it publishes that certificate and
its chain as a PEM bundle (the signing certificate first, then the intermediates, the root last).
``certificate_jwk`` turns the bundle into one JWK (RFC 7517): the signing certificate's public key
(PyJWT's ``to_jwk``), ``kid`` its RFC 7638 thumbprint, ``x5c`` the chain in file order and
``x5t#S256`` the signing certificate's SHA-256 thumbprint, so that a verifier can check a stamped
PDF's signature offline and pin the chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PURPOSE = "pdf-signature"
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
"""The required members of each key type, in lexicographic order (RFC 7638 §3.2, RFC 8037 §2)."""


class InvalidCertificates(ValueError):
    """The bundle holds no certificate, is not PEM, or its first certificate's key is unsupported."""


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of a public JWK."""
    members = THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def public_jwk(key: Any) -> dict[str, Any]:
    """A certificate's public key as JWK members (kty and key material) plus its ``alg``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        members = ECAlgorithm.to_jwk(key, as_dict=True)
        alg = EC_ALGORITHMS.get(members["crv"])
        if alg is None:
            raise InvalidCertificates(f"unsupported elliptic curve {members['crv']}")
    elif isinstance(key, rsa.RSAPublicKey):
        members = RSAAlgorithm.to_jwk(key, as_dict=True)
        members.pop("key_ops", None)  # "use" says the same; RFC 7517 §4.3: not both
        alg = "RS256"
    elif isinstance(key, ed25519.Ed25519PublicKey):
        members = OKPAlgorithm.to_jwk(key, as_dict=True)
        alg = "EdDSA"
    else:
        raise InvalidCertificates(f"unsupported certificate key type {type(key).__name__}")
    return {**members, "alg": alg}


def certificate_jwk(pem_bundle: bytes) -> dict[str, Any]:
    """The JWK of a PEM certificate bundle whose first certificate is the signing certificate."""
    try:
        chain = x509.load_pem_x509_certificates(pem_bundle)
    except ValueError as exc:
        raise InvalidCertificates(f"not a PEM certificate bundle: {exc}") from None
    if not chain:
        raise InvalidCertificates("no certificate in the bundle")
    try:
        key = chain[0].public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCertificates(f"unreadable public key in the signing certificate: {exc}") from None
    jwk = public_jwk(key)
    return {**jwk, "kid": thumbprint(jwk), "use": "sig", "purpose": PURPOSE,
            "x5c": [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain],
            "x5t#S256": b64url(chain[0].fingerprint(hashes.SHA256()))}
