"""Prometheus metrics of the minting service (served at ``/metrics`` with the platform's)."""

from prometheus_client import Counter, Gauge

STOCK_AVAILABLE = Gauge("emeterai_stock_available", "STOCK serials left to issue (refreshed by the worker)")
STAMPS_MINTED = Counter("emeterai_stamps_minted_total", "Serials issued to paid orders")
STAMPS_STAMPED = Counter("emeterai_stamps_stamped_total", "Serials used by a stamped document")
MINTING_FAILED = Counter("emeterai_minting_failed_total", "Paid orders that got no serials (out of stock)")
ORDERS_AWAITING_STOCK = Gauge("emeterai_orders_awaiting_stock",
                              "Paid orders whose serials wait for stock (refreshed by the worker)")
STOCK_WAIT_OLDEST = Gauge("emeterai_stock_wait_oldest_seconds",
                          "How long the oldest paid order waiting for stock has waited (refreshed by the worker)")
SERIALS_VOIDED = Counter("emeterai_serials_voided_total", "Issued serials made VOID because their order gave them back")
SERIAL_REUSE = Counter(
    "emeterai_serial_reuse_total",
    "Refused uses of a serial (ALERT): already stamped by another stamping, VOID, STOCK or UNKNOWN",
    ["status"],
)
