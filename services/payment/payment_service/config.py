"""Settings of the payment service; every field is overridable as `PAYMENT_<FIELD>`."""

from typing import ClassVar

from emeterai_shared.config import ServiceSettings


class PaymentSettings(ServiceSettings):
    service_name: ClassVar[str] = "payment"
    default_http_port: ClassVar[int] = 8082
