"""SNAP (Standar Nasional Open API Pembayaran): the protocol partner banks call us with.

Pure code, no I/O: signatures and timestamps (`signatures`), response codes (`codes`), request
validation and the documented answer models (`models`), and the paths of the three endpoints
below. The biller's endpoints (``entrypoints.http``) and the bank simulator (``adapters.banksim``)
both use them.
"""

TOKEN_PATH = "/snap/v1.0/access-token/b2b"
INQUIRY_PATH = "/snap/v1.0/transfer-va/inquiry"
PAYMENT_PATH = "/snap/v1.0/transfer-va/payment"
QR_NOTIFY_PATH = "/snap/v1.0/qr/qr-mpm-notify"
QR_GENERATE = "/v1.0/qr/qr-mpm-generate"
QR_QUERY = "/v1.0/qr/qr-mpm-query"
QR_CANCEL = "/v1.0/qr/qr-mpm-cancel"
QR_REFUND = "/v1.0/qr/qr-mpm-refund"
ACCESS_TOKEN = "/v1.0/access-token/b2b"
"""The acquirer's paths, under its ``base_url`` (which may carry a path of its own)."""
