"""Partner systems (the CASN registration system and the like), from ``ORDER_PARTNERS_FILE``.

``{"partners": [{"partner_id", "api_key", "webhook_url"?, "webhook_secret", "max_quantity"}]}``.
A partner authenticates with ``X-Api-Key``; keys are compared as SHA-256 digests in constant
time. A partner acts as an account of its own whose id is derived from its partner id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

PARTNER_NAMESPACE = uuid.UUID("6f2d0c1e-8a51-4a43-9a8e-2f7c7f3e0b11")


class PartnerConfig(BaseModel):
    partner_id: str = Field(min_length=1, max_length=64)
    api_key: str = Field(min_length=16)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    max_quantity: int = Field(default=100, ge=1, le=1_000_000)


class PartnersFile(BaseModel):
    partners: list[PartnerConfig] = []


@dataclass(frozen=True)
class Partner:
    partner_id: str
    account_id: uuid.UUID
    max_quantity: int
    key_digest: bytes


class PartnerRegistry:
    def __init__(self, partners: list[PartnerConfig]):
        self._partners = [
            Partner(p.partner_id, uuid.uuid5(PARTNER_NAMESPACE, p.partner_id), p.max_quantity,
                    hashlib.sha256(p.api_key.encode()).digest())
            for p in partners
        ]

    @classmethod
    def from_file(cls, path: str) -> PartnerRegistry:
        if not path:
            return cls([])
        return cls(PartnersFile.model_validate(json.loads(Path(path).read_text())).partners)

    def authenticate(self, api_key: str) -> Partner | None:
        digest = hashlib.sha256(api_key.encode()).digest()
        found = None
        for partner in self._partners:  # no early exit: the time taken says nothing
            if hmac.compare_digest(partner.key_digest, digest):
                found = partner
        return found
