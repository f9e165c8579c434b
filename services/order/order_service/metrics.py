"""Prometheus metrics of the order service (served at ``/metrics`` with the platform's)."""

from prometheus_client import Counter, Gauge

WEBHOOK_ATTEMPTS = Counter(
    "emeterai_webhook_attempts_total", "Partner webhook attempts, by the delivery's state after each",
    ["partner", "outcome"],
)

SMS_SENDS = Counter(
    "emeterai_sms_sends_total",
    "Texts to phones (sign-in codes) by outcome: sent, failed (kept in sms_outbox with its reason), expired (dropped)",
    ["outcome"],
)

SMS_BACKLOG = Gauge(
    "emeterai_sms_backlog", "Sign-in texts waiting in sms_outbox (due or being sent), as last seen by this worker",
)
SMS_OLDEST_AGE = Gauge(
    "emeterai_sms_oldest_age_seconds", "Age of the oldest sign-in text waiting in sms_outbox, as last seen",
)

ORDER_WATCHES = Gauge(
    "emeterai_order_watches",
    "Long polls of GET /v1/orders/{order_id} waiting for their order's view to change in this api process",
)
ORDER_WATCH_WAKEUPS = Counter(
    "emeterai_order_watch_wakeups_total",
    "Long polls ended by their order's change (changed), at the end of their wait (timeout), because their "
    "client had gone (gone), or because the api was stopping (closed)", ["outcome"],
)
