"""Settings of the stamping service; every field is overridable as `STAMPING_<FIELD>`."""

from typing import ClassVar

from emeterai_shared.config import ServiceSettings

from stamping_service.pdf.inspect import Limits

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

    def inspect_limits(self) -> Limits:
        return Limits(max_bytes=self.max_upload_bytes, max_pages=self.inspect_max_pages,
                      max_objects=self.inspect_max_objects, max_depth=self.inspect_max_depth,
                      max_decoded_bytes=self.inspect_max_decoded_bytes,
                      max_decode_ratio=self.inspect_max_decode_ratio,
                      max_total_decoded_bytes=self.inspect_max_total_decoded_bytes,
                      parse_timeout_s=self.inspect_timeout_s)
