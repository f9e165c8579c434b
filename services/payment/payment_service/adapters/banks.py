"""Partner banks, loaded from ``PAYMENT_PARTNERS_FILE`` (``{"banks": [...]}``, contract shape).

A bank's entry and its private key can be kept together in a directory (``bank.json`` and
``private_key.pem``): ``dev-bank`` creates one beside the partners file, the bank simulator's
``keygen`` one anywhere.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from emeterai_shared.files import locked, write_atomic

from payment_service.adapters.snap.models import pad_partner_service_id
from payment_service.adapters.snap.signatures import load_public_key

log = logging.getLogger(__name__)

BANK_FILE = "bank.json"
PRIVATE_KEY_FILE = "private_key.pem"


@dataclass(frozen=True)
class Bank:
    client_id: str
    client_secret: str
    public_key: rsa.RSAPublicKey
    partner_service_id: str
    """Digits of the company code (at most 8); SNAP bodies carry it padded with spaces."""
    channel_id: str
    name: str = ""
    """What applicants see (optional ``name`` in the partners file; the client id when absent)."""

    @property
    def display_name(self) -> str:
        return self.name or self.client_id


class BankRegistry:
    """The configured banks, in file order (the first is the default bank for bills)."""

    def __init__(self, banks: list[Bank]) -> None:
        self._banks = {bank.client_id: bank for bank in banks}
        if len(self._banks) != len(banks):
            raise ValueError("partner banks: duplicate client_id")

    @classmethod
    def load(cls, path: Path) -> BankRegistry:
        """Read the partners file; a missing file is an empty registry (every bank refused)."""
        if not path.exists():
            log.warning("partners file %s does not exist: no partner bank is configured", path)
            return cls([])
        entries = json.loads(path.read_text()).get("banks", [])
        banks = []
        for entry in entries:
            pad_partner_service_id(entry["partner_service_id"])
            banks.append(Bank(entry["client_id"], entry["client_secret"], load_public_key(entry["public_key_pem"]),
                              entry["partner_service_id"], entry["channel_id"], str(entry.get("name") or "")))
        return cls(banks)

    def get(self, client_id: str) -> Bank | None:
        return self._banks.get(client_id)

    def all(self) -> list[Bank]:
        """In file order (the first is the default)."""
        return list(self._banks.values())

    def for_order(self, client_id: str | None) -> Bank | None:
        """The bank an order names, or the first configured bank when it names none."""
        if client_id is not None:
            return self._banks.get(client_id)
        return next(iter(self._banks.values()), None)


def generate_bank_keys() -> tuple[bytes, bytes]:
    """A fresh RSA-2048 key pair as (PKCS#8 private PEM, SubjectPublicKeyInfo public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def new_bank_config(
    public_key_pem: bytes,
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    partner_service_id: str = "77001",
    channel_id: str = "95221",
) -> dict[str, str]:
    """One entry of ``PAYMENT_PARTNERS_FILE``'s ``banks`` list (random id and secret)."""
    pad_partner_service_id(partner_service_id)
    return {
        "client_id": client_id or f"banksim-{secrets.token_hex(4)}",
        "client_secret": client_secret or secrets.token_urlsafe(32),
        "public_key_pem": public_key_pem.decode(),
        "partner_service_id": partner_service_id,
        "channel_id": channel_id,
    }


def save_bank(directory: Path, config: dict[str, str], private_key_pem: bytes) -> None:
    """Keep a bank's config entry (``bank.json``) and private key (mode 0600) in ``directory``."""
    write_atomic(directory / BANK_FILE, (json.dumps(config, indent=2) + "\n").encode())
    write_atomic(directory / PRIVATE_KEY_FILE, private_key_pem, mode=0o600)


def load_bank(directory: Path) -> tuple[dict[str, str], bytes]:
    """The (config entry, private key PEM) kept by `save_bank`."""
    config = json.loads((directory / BANK_FILE).read_text())
    return config, (directory / PRIVATE_KEY_FILE).read_bytes()


def create_dev_bank(partners_file: Path) -> bool:
    """Create a development bank when ``partners_file`` does not exist: its entry and private key
    go to ``bank.json`` and ``private_key.pem`` beside the partners file. False when it exists.

    Several processes may run it at once (``make run``): creation holds a lock beside the file,
    and each file is replaced whole, so none reads half a file or a second bank's key."""
    if partners_file.exists():
        return False
    with locked(partners_file.with_name(f".{partners_file.name}.lock")):
        if partners_file.exists():
            return False
        private_pem, public_pem = generate_bank_keys()
        config = {**new_bank_config(public_pem, client_id="dev-bank"), "name": "Bank Simulasi (pengembangan)"}
        save_bank(partners_file.parent, config, private_pem)
        write_atomic(partners_file, (json.dumps({"banks": [config]}, indent=2) + "\n").encode(), mode=0o600)
    return True
