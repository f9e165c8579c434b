"""Settings shared by every service (pydantic-settings).

Resolution order, highest first: explicit arguments, ``<SERVICE>_<FIELD>`` environment variables
(``ORDER_HTTP_PORT``), ``EMETERAI_<FIELD>`` environment variables shared by all services
(``EMETERAI_AMQP_URL``), then the defaults below, which are safe for a local machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

if TYPE_CHECKING:
    from emeterai_shared.admission import AdmissionSettings

COMMON_ENV_PREFIX = "EMETERAI_"


class ServiceSettings(BaseSettings):
    """Settings of one service; subclasses set ``service_name`` and the default ports."""

    model_config = SettingsConfigDict(extra="ignore")

    service_name: ClassVar[str] = "service"
    default_http_port: ClassVar[int] = 8080

    pg_base_url: str = "postgresql://root@127.0.0.1:5432"
    database_name: str = ""
    database_url: str = ""
    db_pool_min: int = 1
    db_pool_max: int = 8
    """Per api and worker process (a relay takes at most 3): `make run` stays within 4 x (8 + 8 + 3)
    = 76 of PostgreSQL's default 100 connections."""
    db_command_timeout_s: float = 30.0
    db_count_queries: bool = False
    """Count every statement a process sends through its pool in ``emeterai_db_queries_total{service,
    process}`` (``db.QueryCounter``): round trips per unit of work. Off by default: a few microseconds
    per statement."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_urls: str = ""
    """Several brokers (the nodes of a RabbitMQ cluster), comma-separated AMQP URLs: a process connects to
    the first that answers and, when that connection is lost, to the next (``EMETERAI_AMQP_URLS``).
    Empty: ``amqp_url`` alone."""
    amqp_heartbeat_s: int = 30
    amqp_connect_timeout_s: float = 10.0
    publish_timeout_s: float = 10.0

    http_host: str = "127.0.0.1"
    http_port: int = 0
    worker_metrics_port: int = 0
    relay_metrics_port: int = 0
    http_max_body_bytes: int = 1024 * 1024
    trusted_proxies: str = ""
    """Addresses or networks of the ingress proxies (``127.0.0.1, 10.0.0.0/8``) whose
    ``X-Forwarded-For`` names the client (``emeterai_shared.forwarded``); empty: nobody's."""
    http_max_in_flight: int = 256
    """Requests one api process answers at once; past it ``503 busy`` (0: no cap)."""
    admission_target_wait_s: float = 30.0
    """Global admission: the backlog admitted is what the platform drains in this many seconds."""
    admission_min_limit: int = 200
    admission_sample_interval_s: float = 1.0
    admission_max_retry_after_s: int = 60
    admission_unknown_retry_after_s: int = 3
    """``Retry-After`` past the limit before any drain rate was measured (the back tier just started)."""
    admission_max_in_flight: int = 0
    """Front-door requests (new orders, uploads) one api process works on at once; past it ``503
    busy``. Default: 4 x ``db_pool_max`` (more would only queue for a database connection)."""
    admission_queue_wait_s: float = 0.5
    """Past ``admission_max_in_flight``, a request waits this long at most for a slot before ``503 busy``."""
    admission_max_queued: int = 0
    """Requests one api process keeps waiting for a slot (default 4 x the in-flight cap)."""
    admission_busy_max_retry_after_s: int = 30
    """Longest ``Retry-After`` of a ``503 busy`` (refused callers are spread over the time they need)."""
    admission_newcomer_ratio: float = 1.25
    """While every front-door slot of an api process is taken, requests that open a new session
    (sign-in codes, new accounts) are admitted at this many per order placed there (0: not paced)."""
    admission_newcomer_floor_per_s: float = 5.0
    """Newcomers admitted per second and process while the slots are full, whatever the orders."""
    admission_newcomer_burst: int = 0
    """Newcomers admitted at once beyond that pace (default: the in-flight cap plus its line, 160
    for the order api: a burst the slots and the line can hold is never paced)."""

    prefetch: int = 128
    consumer_concurrency: int = 4
    consumer_batch_max: int = 32
    consumer_linger_s: float = 0.05
    """Longest a consumer waits for more deliveries to join a batch that is not full (0: never)."""
    retry_delays_ms: list[int] = Field(default_factory=lambda: [5_000, 30_000, 300_000, 1_800_000])
    shutdown_grace_s: float = 20.0

    relay_batch_size: int = 500
    relay_linger_s: float = 0.05
    """Wait of a relay between waking (or a batch that was not full) and claiming: the rows
    committed meanwhile go in the same batch (0: claim at once)."""
    relay_poll_interval_s: float = 1.0
    relay_max_attempts: int = 10
    relay_backoff_max_s: float = 30.0
    outbox_retention_s: int = 24 * 3600
    inbox_retention_s: int = 14 * 24 * 3600
    housekeeping_interval_s: float = 300.0

    secrets_dir: str = "var/secrets"
    auth_public_key_file: str = ""
    auth_token_cache_size: int = 10_000
    """Verified bearer tokens one api process remembers (``TokenVerifier``; 0: verify every time)."""
    auth_token_cache_max_age_s: float = 60.0
    """Longest a verified token is served from that cache before being verified again (and never past its exp)."""

    log_level: str = "INFO"
    log_json: bool = True

    def admission(self) -> AdmissionSettings:
        from emeterai_shared.admission import AdmissionSettings

        return AdmissionSettings(target_wait_s=self.admission_target_wait_s, min_limit=self.admission_min_limit,
                                 sample_interval_s=self.admission_sample_interval_s,
                                 max_retry_after_s=self.admission_max_retry_after_s,
                                 unknown_retry_after_s=self.admission_unknown_retry_after_s,
                                 max_in_flight=self.admission_max_in_flight or 4 * self.db_pool_max,
                                 queue_wait_s=self.admission_queue_wait_s, max_queued=self.admission_max_queued,
                                 busy_max_retry_after_s=self.admission_busy_max_retry_after_s,
                                 newcomer_ratio=self.admission_newcomer_ratio,
                                 newcomer_floor_per_s=self.admission_newcomer_floor_per_s,
                                 newcomer_burst=self.admission_newcomer_burst)

    def default(self, **values: object) -> None:
        """Give each named setting its value unless the environment (or the caller) set it: for
        defaults derived from other settings, in a ``model_validator(mode="after")``."""
        for name, value in values.items():
            if not getattr(self, name):
                setattr(self, name, value)

    @model_validator(mode="after")
    def _derive(self) -> ServiceSettings:
        self.default(database_name=f"emeterai_{self.service_name}", http_port=self.default_http_port)
        self.default(database_url=f"{self.pg_base_url.rstrip('/')}/{self.database_name}",
                     worker_metrics_port=self.http_port + 1000, relay_metrics_port=self.http_port + 2000,
                     auth_public_key_file=f"{self.secrets_dir}/auth-ed25519.pub")
        if not self.retry_delays_ms or any(d <= 0 for d in self.retry_delays_ms):
            raise ValueError("retry_delays_ms must be a non-empty list of positive delays")
        return self

    @property
    def amqp_addresses(self) -> list[str]:
        """The broker URLs to use: ``amqp_urls`` when set, else ``amqp_url``."""
        from emeterai_shared.messaging.connection import broker_addresses

        return broker_addresses(self.amqp_urls or self.amqp_url)

    @property
    def max_attempts(self) -> int:
        """First delivery plus one attempt per delay tier."""
        return len(self.retry_delays_ms) + 1

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        prefix = f"{cls.service_name.upper()}_"
        return (
            init_settings,
            EnvSettingsSource(settings_cls, env_prefix=prefix),
            EnvSettingsSource(settings_cls, env_prefix=COMMON_ENV_PREFIX),
            file_secret_settings,
        )

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to log: URLs (and comma-separated lists of URLs) lose their passwords."""

        def redact(value: str) -> str:
            if "://" not in value or "@" not in value:
                return value
            scheme, rest = value.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in creds else value

        data = self.model_dump()
        for key, value in data.items():
            if isinstance(value, str) and "://" in value and "@" in value:
                data[key] = ",".join(redact(part) for part in value.split(","))
        return data
