"""Prometheus metrics of the minting service (served at ``/metrics`` with the platform's)."""

from prometheus_client import Counter, Gauge

STOCK_AVAILABLE = Gauge("emeterai_stock_available", "STOCK serials left to issue (refreshed by the worker)")
STAMPS_MINTED = Counter("emeterai_stamps_minted_total", "Serials issued to paid orders")
STAMPS_STAMPED = Counter("emeterai_stamps_stamped_total", "Serials used by a stamped document")
MINTING_FAILED = Counter("emeterai_minting_failed_total", "Paid orders that got no serials (out of stock)")
SERIAL_REUSE = Counter(
    "emeterai_serial_reuse_total",
    "Refused uses of a serial (ALERT): already stamped by another stamping, VOID, STOCK or UNKNOWN",
    ["status"],
)
