"""Settings of the order service; every field is overridable as `ORDER_<FIELD>`."""

from typing import ClassVar

from emeterai_shared.config import ServiceSettings


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

    @property
    def private_key_path(self) -> str:
        return self.auth_private_key_file or f"{self.secrets_dir}/auth-ed25519.pem"
