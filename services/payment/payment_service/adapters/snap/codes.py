"""SNAP response codes: HTTP status (3 digits) + service code (2) + case code (2)."""

from enum import Enum, StrEnum


class Service(StrEnum):
    """SNAP service codes used by the virtual-account biller."""

    ACCESS_TOKEN = "73"
    INQUIRY = "24"
    PAYMENT = "25"
    QR_GENERATE = "47"
    QR_QUERY = "51"
    QR_NOTIFY = "52"
    QR_CANCEL = "77"
    QR_REFUND = "78"


def code(http_status: int, service: str, case: int | str) -> str:
    """Compose a response code, e.g. ``code(404, Service.PAYMENT, 12) == "4042512"``."""
    service, case = str(service), f"{int(case):02d}"
    if not (100 <= http_status <= 599 and len(service) == 2 and service.isdigit() and len(case) == 2):
        raise ValueError(f"bad SNAP code parts: {http_status}, {service!r}, {case!r}")
    return f"{http_status}{service}{case}"


def http_status(response_code: str) -> int:
    """HTTP status carried by a response code (its first three digits)."""
    if len(response_code) != 7 or not response_code.isdigit():
        raise ValueError(f"not a SNAP response code: {response_code!r}")
    return int(response_code[:3])


class Case(Enum):
    """Outcomes the biller answers with: (HTTP status, case code, default responseMessage)."""

    SUCCESS = (200, 0, "Successful")
    INVALID_FIELD_FORMAT = (400, 1, "Invalid Field Format")
    MISSING_MANDATORY_FIELD = (400, 2, "Invalid Mandatory Field")
    UNAUTHORIZED = (401, 0, "Unauthorized")
    """Unknown client, bad signature, X-TIMESTAMP out of range, X-PARTNER-ID not the token's bank."""
    INVALID_TOKEN = (401, 1, "Invalid Token (B2B)")
    """An access token unknown or expired."""
    TRANSACTION_NOT_FOUND = (404, 1, "Transaction Not Found")
    """QRIS: an unknown reference (``4045201``)."""
    VA_NOT_FOUND = (404, 12, "Invalid Bill/Virtual Account [Not Found]")
    INVALID_AMOUNT = (404, 13, "Invalid Amount")
    BILL_ALREADY_PAID = (404, 14, "Paid Bill")
    INCONSISTENT_REQUEST = (404, 18, "Inconsistent Request")
    """An X-EXTERNAL-ID sent again with the same content (a replay): the first answer's data again."""
    VA_EXPIRED = (404, 19, "Invalid Bill/Virtual Account [Expired]")
    CONFLICT = (409, 0, "Conflict")
    """An X-EXTERNAL-ID reused with other content, or a paymentRequestId of another VA."""
    DUPLICATE_PARTNER_REFERENCE = (409, 1, "Duplicate partnerReferenceNo")
    """QRIS generate: that partnerReferenceNo was already generated (``4094701``): query it instead."""
    INTERNAL_ERROR = (500, 0, "General Error")
    TIMEOUT = (504, 0, "Timeout")
    """The biller cannot answer now (its database is out of reach): nothing was done, retry."""

    def __init__(self, http_status: int, case: int, message: str) -> None:
        self.http_status = http_status
        self.case = case
        self.message = message

    def code(self, service: Service) -> str:
        """The response code of this case for ``service``."""
        return code(self.http_status, service, self.case)

    @classmethod
    def of(cls, response_code: str) -> "Case":
        """The case of a response code, whatever its service (``ValueError`` if unknown)."""
        key = (http_status(response_code), int(response_code[5:]))
        for member in cls:
            if (member.http_status, member.case) == key:
                return member
        raise ValueError(f"unknown SNAP response code: {response_code!r}")


def default_message(response_code: str) -> str:
    """Default responseMessage of a response code."""
    return Case.of(response_code).message
