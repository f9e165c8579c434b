"""Prometheus metrics of the order service (served at ``/metrics`` with the platform's)."""

from prometheus_client import Counter

WEBHOOK_ATTEMPTS = Counter(
    "emeterai_webhook_attempts_total", "Partner webhook attempts, by the delivery's state after each",
    ["partner", "outcome"],
)

SMS_SENDS = Counter(
    "emeterai_sms_sends_total", "Texts to phones (sign-in codes) by outcome: sent, failed (parked), expired (dropped)",
    ["outcome"],
)
