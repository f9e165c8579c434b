"""Settings of the minting service; every field is overridable as `MINTING_<FIELD>`."""

from __future__ import annotations

from typing import ClassVar

from emeterai_shared.config import ServiceSettings
from pydantic import model_validator


class MintingSettings(ServiceSettings):
    service_name: ClassVar[str] = "minting"
    default_http_port: ClassVar[int] = 8083

    signing_key_file: str = ""
    """Ed25519 private key (PEM) that signs stamp tokens; default ``{secrets_dir}/minting-ed25519.pem``,
    created on first start when missing (development)."""
    published_keys_file: str = ""
    """Optional extra public keys (PEM, concatenated) that ``GET /v1/keys`` publishes, for rotation."""
    stamping_certificates_file: str = ""
    """The stamping service's PDF signing certificate chain (PEM bundle: the signing certificate first,
    then its intermediates, the root last), which ``GET /v1/keys`` publishes as one JWK with ``x5c``;
    default ``{secrets_dir}/stamping-certificates.pem``. The stamping service writes it (in production
    a mounted file); it is read at request time, so a rotated certificate shows without a restart, and
    while it is missing or unusable only the stamp-token keys are published."""
    registry_rate_per_s: float = 5.0
    """``GET /v1/stamps/{sn}`` requests per second per client IP and api process, after the burst."""
    registry_burst: int = 20
    stock_refresh_interval_s: float = 15.0
    """How often the worker refreshes the ``emeterai_stock_available`` gauge (and the awaiting-stock ones)."""
    stock_wait_s: float = 7200.0
    """How long a paid order whose serials find too little stock waits for stock before it is
    refunded (``minting.failed.v1`` at its ``refund_at``); 0: refunded at once."""
    stock_wait_retry_interval_s: float = 5.0
    """How often the worker serves the orders waiting for stock (issues them when stock is there,
    fails them past their deadline)."""

    @model_validator(mode="after")
    def _derive_key_file(self) -> MintingSettings:
        self.default(signing_key_file=f"{self.secrets_dir}/minting-ed25519.pem",
                     stamping_certificates_file=f"{self.secrets_dir}/stamping-certificates.pem")
        return self
