"""Prometheus metrics of the payment service (served at ``/metrics`` with the platform's)."""

from prometheus_client import Counter, Histogram

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
