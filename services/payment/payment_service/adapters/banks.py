"""Partner banks, loaded from ``PAYMENT_PARTNERS_FILE`` (``{"banks": [...]}``, contract shape)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from payment_service.snap.banksim import generate_bank_keys, new_bank_config, save_bank
from payment_service.snap.models import pad_partner_service_id
from payment_service.snap.signatures import load_public_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bank:
    client_id: str
    client_secret: str
    public_key: rsa.RSAPublicKey
    partner_service_id: str
    """Digits of the company code (at most 8); SNAP bodies carry it padded with spaces."""
    channel_id: str


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
        entries = json.loads(path.read_text())["banks"]
        banks = []
        for entry in entries:
            pad_partner_service_id(entry["partner_service_id"])
            banks.append(Bank(entry["client_id"], entry["client_secret"], load_public_key(entry["public_key_pem"]),
                              entry["partner_service_id"], entry["channel_id"]))
        return cls(banks)

    def get(self, client_id: str) -> Bank | None:
        return self._banks.get(client_id)

    def for_order(self, client_id: str | None) -> Bank | None:
        """The bank an order names, or the first configured bank when it names none."""
        if client_id is not None:
            return self._banks.get(client_id)
        return next(iter(self._banks.values()), None)


def create_dev_bank(partners_file: Path) -> bool:
    """Create a development bank when ``partners_file`` does not exist: its entry and private key
    go to ``bank.json`` and ``private_key.pem`` beside the partners file. False when it exists."""
    if partners_file.exists():
        return False
    private_pem, public_pem = generate_bank_keys()
    config = new_bank_config(public_pem, client_id="dev-bank")
    save_bank(partners_file.parent, config, private_pem)
    tmp = partners_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps({"banks": [config]}, indent=2) + "\n")
    tmp.replace(partners_file)
    return True
