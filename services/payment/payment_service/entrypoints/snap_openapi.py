"""OpenAPI description of the SNAP endpoints: response bodies and headers as partner banks see them."""

from __future__ import annotations

from typing import Any, Literal

from emeterai_shared.http import OpenApi, Operation
from pydantic import BaseModel

from payment_service.snap.models import AccessTokenRequest, Amount, InquiryRequest, PaymentRequest


class SnapResult(BaseModel):
    """Every SNAP answer: ``responseCode`` = HTTP status (3) + service (2) + case (2)."""

    responseCode: str
    responseMessage: str


class AccessTokenAnswer(SnapResult):
    accessToken: str
    tokenType: Literal["Bearer"]
    expiresIn: str


class Reason(BaseModel):
    english: str
    indonesia: str


class InquiryData(BaseModel):
    inquiryStatus: Literal["00", "01"]
    inquiryReason: Reason
    partnerServiceId: str
    customerNo: str
    virtualAccountNo: str
    inquiryRequestId: str
    virtualAccountTrxType: Literal["C"]
    virtualAccountName: str | None = None
    totalAmount: Amount | None = None


class InquiryAnswer(SnapResult):
    virtualAccountData: InquiryData | None = None


class PaymentData(BaseModel):
    paymentFlagStatus: Literal["00", "01", "02"]
    paymentFlagReason: Reason
    partnerServiceId: str
    customerNo: str
    virtualAccountNo: str
    paymentRequestId: str
    paidAmount: Amount
    virtualAccountName: str | None = None
    trxId: str | None = None
    totalAmount: Amount | None = None
    trxDateTime: str | None = None
    referenceNo: str | None = None
    flagAdvise: Literal["Y", "N"] | None = None


class PaymentFlagAnswer(SnapResult):
    virtualAccountData: PaymentData | None = None


_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "X-TIMESTAMP": {"type": "string", "format": "date-time",
                    "description": "ISO-8601 with a UTC offset, within the allowed skew of our clock"},
    "X-EXTERNAL-ID": {"type": "string", "pattern": "^[0-9]{1,36}$",
                      "description": "unique per bank per day: a repeat is a replay (18) or a conflict (409)"},
    "X-CLIENT-KEY": {"type": "string", "description": "the bank's client_id"},
    "X-PARTNER-ID": {"type": "string", "description": "the bank's client_id (as its access token's)"},
    "CHANNEL-ID": {"type": "string"},
}


def _headers(*names: str) -> list[dict[str, Any]]:
    """Signed headers (X-SIGNATURE itself is the security scheme's)."""
    return [{"name": name, "in": "header", "required": True,
             "schema": {k: v for k, v in _HEADER_SCHEMAS[name].items() if k != "description"},
             "description": _HEADER_SCHEMAS[name].get("description", "")} for name in names]


_TRANSACTION_HEADERS = _headers("X-TIMESTAMP", "X-PARTNER-ID", "X-EXTERNAL-ID", "CHANNEL-ID")
_ERRORS: dict[int, tuple[str, type[BaseModel] | None]] = {
    400: ("invalid field format (01): a body that is not JSON (checked before any authentication, also for "
          "a body past the size limit), or a field; missing mandatory field (02)", SnapResult),
    401: ("unauthorized: signature, timestamp, client (00); invalid token (01)", SnapResult),
    500: ("internal error (00)", SnapResult),
    504: ("timeout (00): the biller cannot answer now (a fault); retry after Retry-After", SnapResult),
}


def document_snap(spec: OpenApi, *, token_path: str, inquiry_path: str, payment_path: str) -> None:
    spec.security_schemes["snapClientSignature"] = {
        "type": "apiKey", "in": "header", "name": "X-SIGNATURE",
        "description": "base64 SHA256withRSA(bank private key, X-CLIENT-KEY + '|' + X-TIMESTAMP)",
    }
    spec.security_schemes["snapBearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "B2B access token; X-SIGNATURE = base64 HMAC-SHA512(client secret, "
                       "METHOD:path:token:hex(sha256(minified body)):X-TIMESTAMP)",
    }
    spec.add(Operation(
        "POST", token_path, "SNAP B2B access token (service 73)", request=AccessTokenRequest,
        responses={200: ("token issued (2007300)", AccessTokenAnswer), **_ERRORS},
        security=["snapClientSignature"], tags=["snap"], parameters=_headers("X-TIMESTAMP", "X-CLIENT-KEY"),
        oversize_status=None,
    ))
    spec.add(Operation(
        "POST", inquiry_path, "SNAP virtual-account inquiry (service 24)", request=InquiryRequest,
        responses={200: ("the bill (2002400)", InquiryAnswer),
                   404: ("VA not found (12), bill paid (14), VA expired (19)", InquiryAnswer), **_ERRORS},
        security=["snapBearer"], tags=["snap"], parameters=_TRANSACTION_HEADERS, oversize_status=None,
    ))
    spec.add(Operation(
        "POST", payment_path, "SNAP virtual-account payment flag (service 25)", request=PaymentRequest,
        responses={200: ("payment accepted (2002500)", PaymentFlagAnswer),
                   404: ("VA not found (12), invalid amount (13), paid (14), replay (18), expired (19)",
                         PaymentFlagAnswer),
                   409: ("X-EXTERNAL-ID reused with other content, or paymentRequestId of another VA (00)",
                         PaymentFlagAnswer),
                   **_ERRORS},
        security=["snapBearer"], tags=["snap"], parameters=_TRANSACTION_HEADERS, oversize_status=None,
    ))
