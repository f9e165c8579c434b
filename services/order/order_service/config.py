"""Settings of the order service; every field is overridable as `ORDER_<FIELD>`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from emeterai_shared.config import ServiceSettings
from pydantic import model_validator


class OrderSettings(ServiceSettings):
    service_name: ClassVar[str] = "order"
    default_http_port: ClassVar[int] = 8081

    service_fee: int = 2_500
    buyer_max_quantity: int = 100
    token_ttl_s: int = 24 * 3600
    auth_private_key_file: str = ""
    partners_file: str = ""
    receipt_seller: str = "e-Meterai Platform"
    """The seller named on receipts (``GET /v1/orders/{id}/receipt``)."""
    watch_interval_s: float = 0.5
    """How often an api process looks whether the orders its long polls wait on changed (``GET
    /v1/orders/{order_id}`` with ``wait_s``): a change reaches a waiting buyer this late at most,
    plus a read; each look costs a little per request waiting (``bench.front_door``). 0: no long
    polls (``wait_s`` is ignored)."""
    watch_capacity: int = 10_000
    """Long polls one api process holds at once; past them, ``wait_s`` is ignored (answered at once)."""
    acquirer_state_ttl_s: float = 1.0
    """How long an api process keeps what it read of the QRIS acquirers' availability (``POST
    /v1/orders`` by QRIS, ``GET /v1/pricing``): an outage is learnt at most this late; 0: read it
    on every request."""

    # Per-caller limits at the front door (per api process): 429 rate_limited with Retry-After.
    order_rate_per_account_per_s: float = 1.0
    """``POST /v1/orders`` per buyer account, after ``order_burst_per_account``."""
    order_burst_per_account: int = 20
    partner_rate_per_s: float = 200.0
    """Requests per partner system (orders and the event feed), after ``partner_burst``."""
    partner_burst: int = 400

    # Partner webhooks (Standard Webhooks), sent by the worker's dispatcher.
    webhook_timeout_s: float = 5.0
    webhook_max_age_s: float = 3 * 24 * 3600
    webhook_backoff_initial_s: float = 5.0
    webhook_backoff_max_s: float = 3600.0
    webhook_dispatch_interval_s: float = 1.0
    webhook_concurrency_per_partner: int = 4

    # Phone sign-in (POST /v1/auth/*).
    access_token_ttl_s: int = 900
    """Lifetime of a sign-in's access token: also the bound on revocation (logout, reuse detection)."""
    refresh_token_ttl_s: int = 30 * 24 * 3600
    otp_secret: str = ""
    """Key of the codes' HMAC-SHA256 digests; empty: ``<secrets_dir>/otp-hmac.key``, generated once."""
    otp_ttl_s: int = 300
    otp_phone_interval_s: int = 30
    """A phone gets at most one code per this many seconds (0: no such limit)."""
    otp_phone_per_hour: int = 5
    otp_client_limit: int = 20
    """Code requests per client address per ``otp_client_window_s`` (0: no such limit)."""
    otp_client_window_s: int = 600
    dev_sms_file: str = ""
    """Development sink of texts (no gateway): one JSON line per text; default ``var/dev-sms.jsonl``
    (beside ``secrets_dir``)."""
    sms_gateway_url: str = ""
    """Production SMS gateway (HTTP POST ``{"to", "text"}``); empty: the development sink."""
    sms_gateway_token: str = ""
    sms_timeout_s: float = 10.0
    sms_attempts: int = 4
    """Tries per send (backoff between them, for timeouts and 5xx) before the text is kept as failed."""
    sms_dispatch_interval_s: float = 0.1
    """How often the worker looks for sign-in texts to send (``sms_outbox``)."""
    sms_concurrency: int = 64
    """Sign-in texts in flight per worker process (one gateway request each)."""
    signin_housekeeping_interval_s: float = 300.0

    @model_validator(mode="after")
    def _derive_signin(self) -> OrderSettings:
        self.default(dev_sms_file=str(Path(self.secrets_dir).parent / "dev-sms.jsonl"))
        return self

    @property
    def otp_key_path(self) -> str:
        return f"{self.secrets_dir}/otp-hmac.key"

    @property
    def private_key_path(self) -> str:
        return self.auth_private_key_file or f"{self.secrets_dir}/auth-ed25519.pem"
