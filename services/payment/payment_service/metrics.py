"""Prometheus metrics of the payment service (served at ``/metrics`` with the platform's)."""

from prometheus_client import Counter, Gauge, Histogram

PAYMENTS_CAPTURED = Counter("emeterai_payments_captured_total", "Payments captured (bills paid)", ["late"])
PAYMENTS_REFUNDED = Counter("emeterai_payments_refunded_total", "Refunds recorded")
SNAP_RESPONSES = Counter(
    "emeterai_snap_responses_total", "SNAP answers given to partner banks", ["service", "code"]
)
ACQUIRER_CALLS = Counter(
    "emeterai_acquirer_calls_total", "Calls to QRIS acquirers by path and outcome (the SNAP responseCode, "
    "or unreachable)", ["acquirer", "path", "outcome"]
)
ACQUIRER_CALL_SECONDS = Histogram("emeterai_acquirer_call_seconds", "Duration of each call to a QRIS acquirer",
                                  ["acquirer", "path"])
ACQUIRER_BREAKER_STATE = Gauge("emeterai_acquirer_breaker_state", "Circuit breaker of each QRIS acquirer in this "
                               "process: 0 closed, 1 half-open (probing), 2 open (calls fail at once)", ["acquirer"])
ACQUIRER_BREAKER_OPENED = Counter("emeterai_acquirer_breaker_opened_total", "Times an acquirer's circuit breaker "
                                  "opened (a run of failed calls, or a failed probe)", ["acquirer"])
