"""Partner systems (the CASN registration system and the like), from ``ORDER_PARTNERS_FILE``.

``{"partners": [{"partner_id", "api_key", "webhook_url"?, "webhook_secret", "max_quantity"}]}``.
A partner authenticates with ``X-Api-Key`` (``emeterai_shared.auth.PartnerKeys``: SHA-256 digests
compared in constant time). A partner acts as an account of its own whose id is derived from its partner id. A
``webhook_url`` needs a ``webhook_secret`` (see ``webhooks.signing_key`` for how it becomes the
HMAC key); a bad secret stops the process at start, not at the first delivery.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from emeterai_shared.auth import PARTNER_NAMESPACE, PartnerKeys, partner_account_id
from pydantic import BaseModel, Field, model_validator

from order_service.adapters.webhooks import signing_key

__all__ = ["PARTNER_NAMESPACE", "Partner", "PartnerConfig", "PartnerRegistry", "PartnersFile"]


class PartnerConfig(BaseModel):
    partner_id: str = Field(min_length=1, max_length=64)
    api_key: str = Field(min_length=16)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    webhook_secret: str | None = None
    max_quantity: int = Field(default=100, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _webhook(self) -> PartnerConfig:
        if self.webhook_url is not None and not self.webhook_secret:
            raise ValueError(f"partner {self.partner_id}: a webhook_url needs a webhook_secret")
        if self.webhook_secret:
            signing_key(self.webhook_secret)
        return self


class PartnersFile(BaseModel):
    partners: list[PartnerConfig] = []


@dataclass(frozen=True)
class Partner:
    partner_id: str
    account_id: uuid.UUID
    max_quantity: int
    webhook_url: str | None = None
    webhook_key: bytes = field(default=b"", repr=False)


class PartnerRegistry:
    def __init__(self, partners: list[PartnerConfig]):
        self._partners = [
            Partner(p.partner_id, partner_account_id(p.partner_id), p.max_quantity, p.webhook_url,
                    signing_key(p.webhook_secret) if p.webhook_secret else b"")
            for p in partners
        ]
        self._by_id = {p.partner_id: p for p in self._partners}
        self.keys = PartnerKeys({p.partner_id: p.api_key for p in partners})
        """Their ``X-Api-Key``s, for ``emeterai_shared.auth.caller_from_request``."""

    @classmethod
    def from_file(cls, path: str) -> PartnerRegistry:
        if not path:
            return cls([])
        return cls(PartnersFile.model_validate(json.loads(Path(path).read_text())).partners)

    def get(self, partner_id: str) -> Partner | None:
        return self._by_id.get(partner_id)

    def with_webhooks(self) -> list[Partner]:
        return [p for p in self._partners if p.webhook_url is not None]

    def max_quantity(self, partner_id: str | None, buyer_max_quantity: int) -> int:
        """Most stamps one order of the caller may ask for: the partner's own ``max_quantity``, or
        ``buyer_max_quantity`` for a buyer (``partner_id`` None)."""
        partner = None if partner_id is None else self._by_id.get(partner_id)
        return buyer_max_quantity if partner is None else partner.max_quantity
