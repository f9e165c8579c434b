"""Settings of the payment service; every field is overridable as `PAYMENT_<FIELD>`."""

from typing import ClassVar

from emeterai_shared.config import ServiceSettings


class PaymentSettings(ServiceSettings):
    service_name: ClassVar[str] = "payment"
    default_http_port: ClassVar[int] = 8082

    partners_file: str = "var/dev-bank/banks.json"
    """Partner banks, ``{"banks": [...]}`` as in the public contract."""
    bill_expiry_s: int = 3600
    snap_token_ttl_s: int = 900
    snap_timestamp_skew_s: int = 300
    expiry_sweep_interval_s: float = 5.0
    payout_adapter: str = "devbank"
    """Who pays refunds out: ``devbank``, the development bank's simulation (the only adapter so far)."""
    payout_interval_s: float = 1.0
    """How often the worker pays out recorded partial refunds."""
    payout_retry_s: float = 30.0
    """First delay after a failed payout (doubling, at most an hour)."""
    qris_validity_s: int = 900
    """How long a QRIS code can be paid (its bill's expiry and the QR's ``validityPeriod``)."""
    qris_interval_s: float = 0.5
    """How often the worker generates the QRs of new QRIS bills."""
    qris_query_first_s: float = 2.0
    """First query of a QR still unpaid this long after it was made (a notify may get lost)."""
    qris_query_max_s: float = 15.0
    """The longest wait between two queries of a pending QR (the delay grows x1.5 up to it)."""
    acquirer_timeout_s: float = 10.0
    """Timeout of each call to a QRIS acquirer (retried with backoff on timeouts and 5xx)."""
    acquirer_attempts: int = 4
    """Attempts of one call to an acquirer before the job gives up until its next round."""
    acquirer_breaker_threshold: int = 5
    """Calls in a row to one acquirer that failed after their retries before its circuit breaker opens
    (then the worker's calls to it fail at once, and the order service sheds new QRIS orders)."""
    acquirer_breaker_cool_down_s: float = 30.0
    """How long an open breaker refuses calls before one probe call decides (closes it, or opens it again)."""
