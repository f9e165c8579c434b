"""Settings of the order service; every field is overridable as `ORDER_<FIELD>`."""

from typing import ClassVar

from emeterai_shared.config import ServiceSettings


class OrderSettings(ServiceSettings):
    service_name: ClassVar[str] = "order"
    default_http_port: ClassVar[int] = 8081
