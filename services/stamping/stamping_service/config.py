"""Settings of the stamping service; every field is overridable as `STAMPING_<FIELD>`."""

from typing import ClassVar

from emeterai_shared.config import ServiceSettings


class StampingSettings(ServiceSettings):
    service_name: ClassVar[str] = "stamping"
    default_http_port: ClassVar[int] = 8084
