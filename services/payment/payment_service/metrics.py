"""Prometheus metrics of the payment service (served at ``/metrics`` with the platform's)."""

from prometheus_client import Counter

PAYMENTS_CAPTURED = Counter("emeterai_payments_captured_total", "Payments captured (bills paid)", ["late"])
PAYMENTS_REFUNDED = Counter("emeterai_payments_refunded_total", "Refunds recorded")
SNAP_RESPONSES = Counter(
    "emeterai_snap_responses_total", "SNAP answers given to partner banks", ["service", "code"]
)
