"""Settings of the order service; every field is overridable as `ORDER_<FIELD>`."""

from typing import ClassVar

from emeterai_shared.config import ServiceSettings


class OrderSettings(ServiceSettings):
    service_name: ClassVar[str] = "order"
    default_http_port: ClassVar[int] = 8081

    service_fee: int = 2_500
    buyer_max_quantity: int = 100
    token_ttl_s: int = 24 * 3600
    auth_private_key_file: str = ""
    partners_file: str = ""

    @property
    def private_key_path(self) -> str:
        return self.auth_private_key_file or f"{self.secrets_dir}/auth-ed25519.pem"
