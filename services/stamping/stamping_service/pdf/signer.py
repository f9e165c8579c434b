"""The stamping key: loaded from PEM or PKCS#12 in production, generated once for development.

``KeySigner`` is pyHanko's ``SimpleSigner`` holding the private key parsed once: ``SimpleSigner``
parses it again for every signature, which costs milliseconds per document with RSA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
from pyhanko.sign.signers import SimpleSigner
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import get_pyca_cryptography_hash

DEV_ROOT, DEV_CERT, DEV_KEY = "dev-root-ca.pem", "dev-stamping-cert.pem", "dev-stamping-key.pem"


class KeySigner(SimpleSigner):
    def __init__(self, key: PrivateKeyTypes, cert: x509.Certificate, chain: Sequence[x509.Certificate] = ()):
        if key.public_key() != cert.public_key():
            raise ValueError("the private key does not belong to the signing certificate")
        super().__init__(
            signing_cert=translate_pyca_cryptography_cert_to_asn1(cert),
            signing_key=translate_pyca_cryptography_key_to_asn1(key),
            cert_registry=SimpleCertificateStore.from_certs(
                [translate_pyca_cryptography_cert_to_asn1(c) for c in chain]),
        )
        self._key = key

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
