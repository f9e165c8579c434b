"""The stamping service's own Prometheus metrics (the shared ones live in emeterai_shared.telemetry)."""

from prometheus_client import Counter, Histogram

STAMPINGS = Counter(
    "emeterai_stampings_total",
    "Stamping jobs that ended: done (stamped and signed) or failed (serial released to the account)",
    ["outcome"],
)
SIGN_SECONDS = Histogram(
    "emeterai_stamp_sign_seconds",
    "Seconds to render and sign one document in a PDF worker process",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOADS = Counter(
    "emeterai_stamping_uploads_total",
    "POST /v1/stampings answers: accepted, or the refusal code",
    ["outcome"],
)
VERIFICATIONS = Counter(
    "emeterai_verifications_total",
    "POST /v1/verify answers: valid, invalid (including no stamps), or the refusal code",
    ["outcome"],
)
