"""Settings of the minting service; every field is overridable as `MINTING_<FIELD>`."""

from typing import ClassVar

from emeterai_shared.config import ServiceSettings


class MintingSettings(ServiceSettings):
    service_name: ClassVar[str] = "minting"
    default_http_port: ClassVar[int] = 8083
