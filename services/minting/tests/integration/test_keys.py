"""``GET /v1/keys`` publishes the stamping service's PDF signing certificate beside the token keys.

Against an api served in-process with ``MINTING_STAMPING_CERTIFICATES_FILE`` pointing at a chain
generated here (EC P-256 root and signing certificate):

* the set holds the stamp-token key(s) (``purpose`` stamp-token) then one certificate JWK
  (``purpose`` pdf-signature, EC P-256, ES256, RFC 7638 ``kid``, ``x5c`` chain in file order,
  ``x5t#S256``) whose public key is the signing certificate's; the body fits the OpenAPI schema;
* a rotated file shows the new certificate at the next request, without a restart;
* a missing or garbage file gives the token keys alone, 200.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from conftest import Minting


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def p256_chain() -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    """A signing key and [its certificate, the self-signed root that issued it]."""
    now = datetime.now(UTC)
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name("e-meterai test root"))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(root_key, hashes.SHA256()))

    return leaf_key, [issue("e-meterai test stamping", leaf_key, False), issue("e-meterai test root", root_key, True)]


def write(path: Path, certificates: list[x509.Certificate]) -> None:
    """Install a bundle as a rotation would: written beside the file, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    os.replace(tmp, path)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def assert_token_keys(keys: list[dict[str, Any]]) -> None:
    assert keys
    for key in keys:
        assert {k: key[k] for k in ("kty", "crv", "alg", "use", "purpose")} == {
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "purpose": "stamp-token"}
        assert not {"y", "n", "e", "x5c", "x5t#S256"} & set(key)  # absent, not null


async def keys_of(minting: Minting, base_url: str) -> list[dict[str, Any]]:
    status, body, headers = await minting.get("/v1/keys", base_url)
    assert status == 200, body
    assert "max-age" in headers["Cache-Control"]
    doc = (await minting.get("/openapi.json", base_url))[1]
    jsonschema.validate(body, {"$ref": "#/components/schemas/KeySet", "components": doc["components"]})
    jwt.PyJWKSet.from_dict(body)  # a standard JWK set library takes every member
    keys: list[dict[str, Any]] = body["keys"]
    return keys


async def test_the_signing_certificate_is_published_with_its_chain(minting: Minting, tmp_path: Path) -> None:
    bundle = tmp_path / "stamping-certificates.pem"
    leaf_key, chain = p256_chain()
    write(bundle, chain)
    async with minting.api(stamping_certificates_file=str(bundle)) as base_url:
        *token_keys, cert = await keys_of(minting, base_url)
    assert_token_keys(token_keys)
    assert [k["kid"] for k in token_keys] == [k["kid"] for k in await keys_of(minting, minting.base_url)]

    assert {k: cert[k] for k in ("kty", "crv", "alg", "use", "purpose")} == {
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "purpose": "pdf-signature"}
    assert [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in cert["x5c"]] == chain
    assert cert["x5t#S256"] == b64url(chain[0].fingerprint(hashes.SHA256()))
    canonical = json.dumps({m: cert[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    assert cert["kid"] == b64url(hashlib.sha256(canonical.encode()).digest())  # RFC 7638

    published, certified = jwt.PyJWK.from_dict(cert).key, chain[0].public_key()
    assert isinstance(published, ec.EllipticCurvePublicKey) and isinstance(certified, ec.EllipticCurvePublicKey)
    assert published.public_numbers() == leaf_key.public_key().public_numbers() == certified.public_numbers()
    # what the stamping service signs, the published key verifies
    signature = leaf_key.sign(b"stamped document", ec.ECDSA(hashes.SHA256()))
    published.verify(signature, b"stamped document", ec.ECDSA(hashes.SHA256()))


async def test_a_rotated_certificate_shows_without_a_restart(minting: Minting, tmp_path: Path) -> None:
    bundle = tmp_path / "stamping-certificates.pem"
    _, first = p256_chain()
    write(bundle, first)
    async with minting.api(stamping_certificates_file=str(bundle)) as base_url:
        before = (await keys_of(minting, base_url))[-1]
        assert before["x5c"] == [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in first]
        assert (await keys_of(minting, base_url))[-1] == before  # cached, same answer
        new_key, second = p256_chain()
        write(bundle, second)
        after = (await keys_of(minting, base_url))[-1]
    assert after["purpose"] == "pdf-signature" and after["kid"] != before["kid"]
    assert after["x5t#S256"] == b64url(second[0].fingerprint(hashes.SHA256()))
    published = jwt.PyJWK.from_dict(after).key
    assert published.public_numbers() == new_key.public_key().public_numbers()


async def test_a_missing_or_garbage_file_publishes_the_token_keys_alone(minting: Minting, tmp_path: Path) -> None:
    bundle = tmp_path / "stamping-certificates.pem"
    async with minting.api(stamping_certificates_file=str(bundle)) as base_url:
        assert_token_keys(await keys_of(minting, base_url))  # missing
        bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
        assert_token_keys(await keys_of(minting, base_url))  # garbage
        assert_token_keys(await keys_of(minting, base_url))  # still garbage (cached)
        _, chain = p256_chain()
        write(bundle, chain)
        assert (await keys_of(minting, base_url))[-1]["purpose"] == "pdf-signature"  # fixed: published
        bundle.unlink()
        assert_token_keys(await keys_of(minting, base_url))  # gone again


async def test_the_default_file_is_in_the_secrets_directory(minting: Minting) -> None:
    assert minting.settings.stamping_certificates_file == f"{minting.settings.secrets_dir}/stamping-certificates.pem"
    assert_token_keys(await keys_of(minting, minting.base_url))  # the session's: none written
