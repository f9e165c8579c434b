"""The stamping key: loaded from PEM or PKCS#12 in production, generated once for development.

``KeySigner`` is pyHanko's ``SimpleSigner`` holding the private key parsed once: ``SimpleSigner``
parses it again for every signature, which costs milliseconds per document with RSA.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asn1crypto import algos, cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from emeterai_shared.files import locked, write_atomic
from pyhanko.keys.internal import translate_pyca_cryptography_cert_to_asn1, translate_pyca_cryptography_key_to_asn1
from pyhanko.sign.attributes import SigningCertificateV2Provider
from pyhanko.sign.general import as_signing_certificate_v2
from pyhanko.sign.signers import SimpleSigner
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import get_pyca_cryptography_hash

DEV_ROOT, DEV_CERT, DEV_KEY = "dev-root-ca.pem", "dev-stamping-cert.pem", "dev-stamping-key.pem"


class _EncodedSigningCertificate(SigningCertificateV2Provider):
    """The signing-certificate-v2 attribute from its encoding, computed once per signer."""

    def __init__(self, signing_cert: asn1_x509.Certificate, encoded: bytes):
        super().__init__(signing_cert)
        self._encoded = encoded

    async def build_attr_value(self, dry_run: bool = False) -> tsp.SigningCertificateV2:
        return tsp.SigningCertificateV2.load(self._encoded)


class KeySigner(SimpleSigner):
    """Besides the key, the parts of every signature that depend only on the certificate (the
    signer identifier and the signing-certificate attribute) are encoded once: pyHanko rebuilds
    them from the parsed certificate for every signature, which was most of a signature's cost
    (asn1crypto re-encodes the issuer name field by field)."""

    def __init__(self, key: PrivateKeyTypes, cert: x509.Certificate, chain: Sequence[x509.Certificate] = ()):
        if key.public_key() != cert.public_key():
            raise ValueError("the private key does not belong to the signing certificate")
        signing_cert = translate_pyca_cryptography_cert_to_asn1(cert)
        super().__init__(
            signing_cert=signing_cert,
            signing_key=translate_pyca_cryptography_key_to_asn1(key),
            cert_registry=SimpleCertificateStore.from_certs(
                [translate_pyca_cryptography_cert_to_asn1(c) for c in chain]),
        )
        self._key = key
        self._sid = cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber(
            {"issuer": signing_cert.issuer, "serial_number": signing_cert.serial_number})}).dump()
        self._signing_certificate = as_signing_certificate_v2(signing_cert).dump()

    def signer_info(self, digest_algorithm: str, signed_attrs: Any, signature: bytes) -> cms.SignerInfo:
        if digest_algorithm == "shake256":  # its parameters depend on the key; rare: let pyHanko do it
            return super().signer_info(digest_algorithm, signed_attrs, signature)
        return cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier.load(self._sid),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": digest_algorithm}),
            "signature_algorithm": self.get_signature_mechanism_for_digest(digest_algorithm),
            "signed_attrs": signed_attrs,
            "signature": signature,
        })

    def _signed_attr_providers(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for provider in super()._signed_attr_providers(*args, **kwargs):
            if type(provider) is SigningCertificateV2Provider:
                yield _EncodedSigningCertificate(provider.signing_cert, self._signing_certificate)
            else:
                yield provider

    def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
        mechanism = self.get_signature_mechanism_for_digest(digest_algorithm).signature_algo
        hash_algorithm = get_pyca_cryptography_hash(digest_algorithm)
        if isinstance(self._key, ec.EllipticCurvePrivateKey) and mechanism == "ecdsa":
            return self._key.sign(data, ec.ECDSA(hash_algorithm))
        if isinstance(self._key, RSAPrivateKey) and mechanism == "rsassa_pkcs1v15":
            return self._key.sign(data, PKCS1v15(), hash_algorithm)
        return super().sign_raw(data, digest_algorithm)


def _password(passphrase: str | bytes | None) -> bytes | None:
    return passphrase.encode() if isinstance(passphrase, str) else passphrase


def _certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    data = Path(path).read_bytes()
    return x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else [x509.load_der_x509_certificate(data)]


def load_signer(
    key_path: str | os.PathLike[str], cert_path: str | os.PathLike[str] | None = None,
    chain_paths: Sequence[str | os.PathLike[str]] = (), passphrase: str | bytes | None = None,
) -> KeySigner:
    """The production signer: a PEM (or DER) key with ``cert_path``, or a PKCS#12 file when ``cert_path`` is None.

    ``chain_paths`` name the intermediate and root certificates (PEM files may hold several); they
    are embedded in every signature so that verifiers can build the chain.
    """
    data, password = Path(key_path).read_bytes(), _password(passphrase)
    chain = [cert for path in chain_paths for cert in _certificates(path)]
    if cert_path is None:
        key, cert, bundled = pkcs12.load_key_and_certificates(data, password)
        if key is None or cert is None:
            raise ValueError(f"{key_path} holds no private key and certificate")
        return KeySigner(key, cert, [*bundled, *chain])
    key = (serialization.load_pem_private_key(data, password) if b"-----BEGIN" in data
           else serialization.load_der_private_key(data, password))
    return KeySigner(key, _certificates(cert_path)[0], chain)


def dev_signing_chain(directory: str | os.PathLike[str]) -> tuple[KeySigner, bytes]:
    """A development signer and its root certificate (PEM), generated in ``directory`` on first use.

    The root CA's key is discarded once the signing certificate is issued: nothing else is ever
    issued under it. Concurrent first calls (several worker processes) generate only once.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".dev-signing.lock"):
        if not all((folder / name).exists() for name in (DEV_ROOT, DEV_CERT, DEV_KEY)):
            _generate(folder)
    return load_signer(folder / DEV_KEY, folder / DEV_CERT, [folder / DEV_ROOT]), (folder / DEV_ROOT).read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "ID"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "e-Meterai platform (development)"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _generate(folder: Path) -> None:
    now = datetime.now(UTC) - timedelta(hours=1)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = _name("e-Meterai Development Root CA")
    root = (
        x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
        .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=20 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder().subject_name(_name("e-Meterai Development Stamping")).issuer_name(root_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=10 * 365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomic(folder / DEV_KEY, key_pem, mode=0o600)
    write_atomic(folder / DEV_CERT, cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(folder / DEV_ROOT, root.public_bytes(serialization.Encoding.PEM))
