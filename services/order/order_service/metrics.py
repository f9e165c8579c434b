"""Prometheus metrics of the order service (served at ``/metrics`` with the platform's)."""

from prometheus_client import Counter

WEBHOOK_ATTEMPTS = Counter(
    "emeterai_webhook_attempts_total", "Partner webhook attempts, by the delivery's state after each",
    ["partner", "outcome"],
)
