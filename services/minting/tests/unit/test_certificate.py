"""The stamping certificate's JWK: standard members, RFC 7638 kid, x5c chain, and the file cache."""

from __future__ import annotations

import base64
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from minting_service.adapters.certificates import StampingCertificates
from minting_service.domain.certificate import InvalidCertificates, certificate_jwk, thumbprint
from minting_service.entrypoints.http import Jwk

NOW = datetime(2024, 9, 4, tzinfo=UTC)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject: str, key: PrivateKey, issuer: str, issuer_key: PrivateKey) -> x509.Certificate:
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=365))
            .sign(issuer_key, algorithm))


def chain(leaf_key: PrivateKey) -> list[x509.Certificate]:
    """[signing certificate, intermediate, root], issued by EC P-256 CAs."""
    root_key, intermediate_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    return [_certificate("stamping", leaf_key, "intermediate", intermediate_key),
            _certificate("intermediate", intermediate_key, "root", root_key),
            _certificate("root", root_key, "root", root_key)]


def pem(certificates: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def test_rfc_7638_and_rfc_8037_thumbprints() -> None:
    rsa_key = {  # RFC 7638 §3.1
        "kty": "RSA", "alg": "RS256", "kid": "2011-04-29", "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCi"
             "FV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c"
             "7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF"
             "44-csFCur-kEgU8awapJzKnqDKgw"}
    assert thumbprint(rsa_key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    okp_key = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}  # RFC 8037 A.3
    assert thumbprint(okp_key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


@pytest.mark.parametrize(("key", "expected"), [
    (ec.generate_private_key(ec.SECP256R1()), {"kty": "EC", "crv": "P-256", "alg": "ES256"}),
    (ec.generate_private_key(ec.SECP384R1()), {"kty": "EC", "crv": "P-384", "alg": "ES384"}),
    (rsa.generate_private_key(65537, 2048), {"kty": "RSA", "alg": "RS256"}),
    (ed25519.Ed25519PrivateKey.generate(), {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA"}),
], ids=["P-256", "P-384", "RSA", "Ed25519"])
def test_the_signing_certificate_becomes_a_standard_jwk_with_its_chain(key: PrivateKey,
                                                                       expected: dict[str, str]) -> None:
    certificates = chain(key)
    jwk = certificate_jwk(pem(certificates))
    assert {k: jwk[k] for k in expected} == expected
    assert (jwk["use"], jwk["purpose"]) == ("sig", "pdf-signature") and "key_ops" not in jwk
    assert jwk["kid"] == thumbprint(jwk)
    assert [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in jwk["x5c"]] == certificates
    digest = base64.urlsafe_b64decode(jwk["x5t#S256"] + "=")
    assert digest == certificates[0].fingerprint(hashes.SHA256())
    assert _spki(jwt.PyJWK.from_dict(jwk).key) == _spki(key.public_key())
    model = Jwk.model_validate(jwk)  # every supported key fits the published model
    assert model.model_dump(mode="json", by_alias=True, exclude_none=True) == jwk


@pytest.mark.parametrize("data", [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                  b"-----END CERTIFICATE-----\n", os.urandom(600)])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidCertificates):
        certificate_jwk(data)


def test_an_unsupported_key_type_is_refused() -> None:
    with pytest.raises(InvalidCertificates, match="unsupported"):
        certificate_jwk(pem(chain(ed448.Ed448PrivateKey.generate())))


def _rotate(path: Path, data: bytes) -> None:
    """Replace the file as a rotation would: write beside it, rename over it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_the_file_is_read_again_only_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "stamping-certificates.pem"
    certificates = StampingCertificates(path)
    caplog.set_level(logging.INFO, "minting_service.adapters.certificates")

    assert certificates.jwk() is None and certificates.jwk() is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # missing: logged once

    first = chain(ec.generate_private_key(ec.SECP256R1()))
    _rotate(path, pem(first))
    jwk = certificates.jwk()
    assert jwk is not None and jwk["x5t#S256"] == certificate_jwk(pem(first))["x5t#S256"]

    reads = 0
    real = certificate_jwk

    def counting(data: bytes) -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return real(data)

    monkeypatch.setattr("minting_service.adapters.certificates.certificate_jwk", counting)
    assert certificates.jwk() == jwk and reads == 0  # unchanged: cached

    second = chain(ec.generate_private_key(ec.SECP256R1()))
    _rotate(path, pem(second))
    rotated = certificates.jwk()
    assert rotated is not None and rotated["x5c"] != jwk["x5c"] and reads == 1
    assert rotated["x5c"][0] == base64.b64encode(second[0].public_bytes(serialization.Encoding.DER)).decode()

    caplog.clear()
    path.write_bytes(b"garbage")
    assert certificates.jwk() is None and certificates.jwk() is None and reads == 2
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # garbage: logged once per version

    third = pem(chain(ec.generate_private_key(ec.SECP256R1())))
    path.write_bytes(third)  # rewritten in place
    os.utime(path, ns=(10**18, 10**18))
    assert certificates.jwk() == certificate_jwk(third)

    caplog.clear()
    path.unlink()
    assert certificates.jwk() is None and certificates.jwk() is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
