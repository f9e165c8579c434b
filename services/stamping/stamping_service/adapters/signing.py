"""Where the stamping key, its certificates, the trust roots and the timestamp authority come from.

Production configures a key and certificate (``STAMPING_SIGNING_KEY_FILE`` with
``STAMPING_SIGNING_CERT_FILE``, or a PKCS#12 file alone) and, optionally, a timestamp authority
(``STAMPING_TSA_URL``). Without a key file, a development chain (root CA + stamping certificate)
is generated once under ``signing_dev_dir`` and reused by every process. ``SigningConfig`` is
plain data: it is handed to the PDF worker processes, which load the signer once each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from emeterai_shared.files import write_atomic
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper

from stamping_service.adapters.pdf.signer import DEV_ROOT, KeySigner, dev_signing_chain, load_signer


@dataclass(frozen=True)
class SigningConfig:
    key_file: str = ""
    cert_file: str = ""
    chain_files: tuple[str, ...] = ()
    passphrase: str = ""
    dev_dir: str = ""
    trust_roots_file: str = ""
    tsa_url: str = ""
    tsa_timeout_s: float = 10.0

    @property
    def development(self) -> bool:
        return not self.key_file

    def signer(self) -> KeySigner:
        if self.development:
            signer, _root = dev_signing_chain(self.dev_dir)
            return signer
        return load_signer(self.key_file, self.cert_file or None, self.chain_files, self.passphrase or None)

    def timestamper(self) -> TimeStamper | None:
        return HTTPTimeStamper(self.tsa_url, timeout=int(self.tsa_timeout_s)) if self.tsa_url else None

    def trust_roots(self) -> list[bytes]:
        """PEM roots that ``/v1/verify`` trusts: the configured file, else the development root, else
        the self-signed certificates of the configured chain."""
        if self.trust_roots_file:
            return [Path(self.trust_roots_file).read_bytes()]
        if self.development:
            dev_signing_chain(self.dev_dir)  # generated on first use
            return [(Path(self.dev_dir) / DEV_ROOT).read_bytes()]
        return [c.public_bytes(serialization.Encoding.PEM) for c in _chain(self.signer()) if c.subject == c.issuer]

    def certificates_pem(self) -> bytes:
        """The signing certificate first, then its chain: what the service publishes."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in _chain(self.signer()))


def _chain(signer: KeySigner) -> list[x509.Certificate]:
    leaf = signer.signing_cert
    assert leaf is not None
    others = [c for c in signer.cert_registry if c.dump() != leaf.dump()]
    return [x509.load_der_x509_certificate(c.dump()) for c in (leaf, *others)]


def publish_certificates(config: SigningConfig, path: str) -> bool:
    """Write the certificate bundle to ``path`` (atomically) when it differs; True when written."""
    data, target = config.certificates_pem(), Path(path)
    if target.is_file() and target.read_bytes() == data:
        return False
    write_atomic(target, data)  # api, worker and relay publish at once
    return True
