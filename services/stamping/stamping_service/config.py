"""Settings of the stamping service; every field is overridable as `STAMPING_<FIELD>`."""

from __future__ import annotations

import os
from typing import ClassVar

from emeterai_shared.config import ServiceSettings
from pydantic import model_validator

from stamping_service.adapters.pdf.inspect import Limits
from stamping_service.adapters.signing import SigningConfig

_LIMITS = Limits()
MAX_UPLOAD_BYTES = 4 * 1024 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class StampingSettings(ServiceSettings):
    service_name: ClassVar[str] = "stamping"
    default_http_port: ClassVar[int] = 8084

    max_upload_bytes: int = MAX_UPLOAD_BYTES
    """Largest PDF accepted by ``POST /v1/stampings`` (CASN uses 800 KB)."""
    http_max_body_bytes: int = MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES
    """aiohttp's ``client_max_size``: the upload limit plus room for the other form fields."""

    inspect_max_pages: int = _LIMITS.max_pages
    inspect_max_objects: int = _LIMITS.max_objects
    inspect_max_depth: int = _LIMITS.max_depth
    inspect_max_decoded_bytes: int = _LIMITS.max_decoded_bytes
    inspect_max_decode_ratio: float = _LIMITS.max_decode_ratio
    inspect_max_total_decoded_bytes: int = _LIMITS.max_total_decoded_bytes
    inspect_timeout_s: float = 10.0

    signing_key_file: str = ""
    """The stamping key: PEM/DER with ``signing_cert_file``, or a PKCS#12 file alone. Empty: a
    development chain is generated under ``signing_dev_dir`` (never use that in production)."""
    signing_cert_file: str = ""
    signing_chain_files: str = ""
    """Comma-separated PEM/DER files with the intermediate and root certificates to embed."""
    signing_key_passphrase: str = ""
    signing_dev_dir: str = ""
    """Default ``{secrets_dir}/stamping-dev-ca``."""
    trust_roots_file: str = ""
    """PEM roots ``POST /v1/verify`` trusts. Default: the development root, or the self-signed
    certificates of the configured chain."""
    certificates_file: str = ""
    """Where the worker publishes its certificate chain (PEM) for minting's ``GET /v1/keys``;
    default ``{secrets_dir}/stamping-certificates.pem``."""
    tsa_url: str = ""
    """RFC 3161 timestamp authority; empty: no timestamp tokens."""
    tsa_timeout_s: float = 10.0

    pdf_workers: int = 0
    """Processes for PDF work in each api and worker process; default: the number of cores."""
    pdf_worker_max_tasks: int = 1000
    """A PDF process is replaced after this many tasks (bounds leaks in native code)."""
    sign_timeout_s: float = 60.0
    """Longest a document may take to stamp; past it the process is killed and the job retried."""
    job_concurrency: int = 0
    """Jobs one worker process stamps at once; default twice ``pdf_workers`` (one signing while
    the other's transaction commits), at most ``db_pool_max // 2`` (a job uses two connections, so a
    stamping worker needs ``db_pool_max`` of at least 2)."""
    job_prefetch: int = 0
    """Queued jobs one worker process holds unacknowledged; default ``job_concurrency``, so that a
    backlog spreads over every worker process."""
    stale_job_after_s: float = 900.0
    """A job QUEUED or STAMPING for this long (its message lost or parked) is queued again."""
    stale_sweep_interval_s: float = 60.0
    document_retention_days: float = 30.0
    """How long a stamped document stays downloadable; originals are deleted once the job ends."""
    purge_interval_s: float = 600.0

    queue_eta_fallback_s: float = 2.0
    """Seconds per job ahead in a QUEUED job's ``queue.eta_s`` while no drain rate was measured yet (no
    job finished in the admission window: the workers just started, or are down)."""

    admission_max_in_flight: int = 128
    """Uploads one api process takes at once (their CPU work waits in the PDF pool, not for a
    database connection): room for an account stamping a full order (100) at once."""

    partners_file: str = ""
    """Partner systems that call the buyer endpoints with ``X-Api-Key`` (the order service's file);
    default: ``ORDER_PARTNERS_FILE`` from the environment, so one setting configures both."""
    partner_upload_rate_per_s: float = 200.0
    """``POST /v1/stampings`` per partner system and api process, after ``partner_upload_burst``."""
    partner_upload_burst: int = 400

    upload_rate_per_account_per_s: float = 2.0
    """``POST /v1/stampings`` per buyer account and api process, after ``upload_burst_per_account``."""
    upload_burst_per_account: int = 100
    """As many as an order may hold: an account can stamp all its stamps at once."""

    verify_rate_per_s: float = 2.0
    """``POST /v1/verify`` requests per second per client IP and api process, after the burst."""
    verify_burst: int = 10
    verify_timeout_s: float = 30.0

    @model_validator(mode="after")
    def _derive_stamping(self) -> StampingSettings:
        self.default(partners_file=os.environ.get("ORDER_PARTNERS_FILE", ""),
                     signing_dev_dir=f"{self.secrets_dir}/stamping-dev-ca",
                     certificates_file=f"{self.secrets_dir}/stamping-certificates.pem")
        if self.pdf_workers <= 0:
            self.pdf_workers = os.cpu_count() or 1
        # A job holds its message's transaction and, briefly, a second connection (marking it
        # STAMPING where its owner sees it): more jobs than half the pool could all hold one and
        # wait forever for the other.
        connection_bound = max(1, self.db_pool_max // 2)
        if self.job_concurrency <= 0:
            self.job_concurrency = min(2 * self.pdf_workers, connection_bound)
        elif self.job_concurrency > connection_bound:
            raise ValueError(f"job_concurrency {self.job_concurrency} needs {2 * self.job_concurrency} database "
                             f"connections: raise db_pool_max or lower job_concurrency to {connection_bound}")
        if self.job_prefetch <= 0:
            self.job_prefetch = self.job_concurrency
        return self

    def signing(self) -> SigningConfig:
        return SigningConfig(
            key_file=self.signing_key_file, cert_file=self.signing_cert_file,
            chain_files=tuple(p.strip() for p in self.signing_chain_files.split(",") if p.strip()),
            passphrase=self.signing_key_passphrase, dev_dir=self.signing_dev_dir,
            trust_roots_file=self.trust_roots_file, tsa_url=self.tsa_url, tsa_timeout_s=self.tsa_timeout_s)

    def inspect_limits(self) -> Limits:
        return Limits(max_bytes=self.max_upload_bytes, max_pages=self.inspect_max_pages,
                      max_objects=self.inspect_max_objects, max_depth=self.inspect_max_depth,
                      max_decoded_bytes=self.inspect_max_decoded_bytes,
                      max_decode_ratio=self.inspect_max_decode_ratio,
                      max_total_decoded_bytes=self.inspect_max_total_decoded_bytes,
                      parse_timeout_s=self.inspect_timeout_s)
