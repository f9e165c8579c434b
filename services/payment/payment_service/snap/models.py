"""SNAP virtual-account request bodies, their validation, and the biller's response bodies.

Validation tells a missing mandatory field (case 02) from a badly formatted one (case 01)
through `SnapFieldError`. Attributes are snake_case; the JSON names are the SNAP camelCase
aliases.
"""

import re
from typing import Any, Literal, TypeVar

from emeterai_shared.http import JsonBodyError, decode_json
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from payment_service.snap.codes import Case, Service

PARTNER_SERVICE_ID_LEN = 8
CUSTOMER_NO_MAX = 20
_PARTNER_SERVICE_ID = re.compile(r" *[0-9]+")
_DIGITS = re.compile(r"[0-9]+")

FlagStatus = Literal["00", "01", "02"]
"""paymentFlagStatus: accepted, rejected, timeout."""


class SnapFieldError(ValueError):
    """A request body field is missing (case 02) or badly formatted (case 01)."""

    def __init__(self, kind: Literal["missing", "invalid"], field: str) -> None:
        self.kind = kind
        self.field = field
        super().__init__(self.message)

    @property
    def case(self) -> Case:
        return Case.MISSING_MANDATORY_FIELD if self.kind == "missing" else Case.INVALID_FIELD_FORMAT

    @property
    def message(self) -> str:
        """SNAP-style responseMessage, e.g. ``Invalid Mandatory Field {paidAmount.value}``."""
        return f"{self.case.message} {{{self.field}}}"

    def response(self, service: Service) -> dict[str, Any]:
        """The error body to answer with."""
        return error_response(self.case.code(service), self.message)


def pad_partner_service_id(digits: str) -> str:
    """Left-pad the company code's digits with spaces to the 8 characters SNAP bodies carry."""
    if not _DIGITS.fullmatch(digits) or len(digits) > PARTNER_SERVICE_ID_LEN:
        raise ValueError(f"partner service id must be 1-8 digits: {digits!r}")
    return digits.rjust(PARTNER_SERVICE_ID_LEN)


def _check_customer_no(customer_no: str) -> str:
    if not _DIGITS.fullmatch(customer_no) or len(customer_no) > CUSTOMER_NO_MAX:
        raise ValueError(f"customer number must be 1-{CUSTOMER_NO_MAX} digits")
    return customer_no


def va_digits(partner_service_id_digits: str, customer_no: str) -> str:
    """Digits-only VA number of the order API: company code digits + customer number."""
    pad_partner_service_id(partner_service_id_digits)
    return partner_service_id_digits + _check_customer_no(customer_no)


def snap_virtual_account_no(partner_service_id_digits: str, customer_no: str) -> str:
    """``virtualAccountNo`` as in SNAP bodies: padded partnerServiceId + customerNo."""
    return pad_partner_service_id(partner_service_id_digits) + _check_customer_no(customer_no)


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="allow")


class AccessTokenRequest(_Body):
    grant_type: Literal["client_credentials"]


class Amount(BaseModel):
    """``{"value": "12500.00", "currency": "IDR"}``."""

    value: str = Field(pattern=r"^[0-9]{1,16}\.[0-9]{2}$")
    currency: Literal["IDR"]

    def to_rupiah(self) -> int:
        """Whole rupiah; ``ValueError`` for a non-zero fraction.

        The model already rejects other currencies, signs and malformed values (case 01); a
        well-formed ``"12500.50"`` is no format error but can match no bill (case 13).
        """
        whole, cents = self.value.split(".")
        if cents != "00":
            raise ValueError(f"not a whole rupiah amount: {self.value}")
        return int(whole)

    @classmethod
    def of(cls, rupiah: int) -> "Amount":
        """The SNAP amount of a whole, non-negative rupiah sum."""
        if rupiah < 0:
            raise ValueError("negative amount")
        return cls(value=f"{rupiah}.00", currency="IDR")


class _VaRequest(_Body):
    """Fields identifying the virtual account, common to inquiry and payment."""

    # The validators below decide (telling a missing field from a malformed one); the schemas publish them.
    partner_service_id: str = Field(json_schema_extra={"pattern": r"^ *[0-9]+$", "minLength": PARTNER_SERVICE_ID_LEN,
                                                       "maxLength": PARTNER_SERVICE_ID_LEN})
    customer_no: str = Field(json_schema_extra={"pattern": f"^[0-9]{{1,{CUSTOMER_NO_MAX}}}$"})
    virtual_account_no: str = Field(description="partnerServiceId + customerNo",
                                    json_schema_extra={"pattern": r"^ *[0-9]+$"})
    trx_date_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})

    @field_validator("partner_service_id")
    @classmethod
    def _partner_service_id(cls, value: str) -> str:
        if len(value) != PARTNER_SERVICE_ID_LEN or not _PARTNER_SERVICE_ID.fullmatch(value):
            raise ValueError("8 characters: digits left-padded with spaces")
        return value

    @field_validator("customer_no")
    @classmethod
    def _customer_no(cls, value: str) -> str:
        return _check_customer_no(value)

    @field_validator("virtual_account_no")
    @classmethod
    def _virtual_account_no(cls, value: str, info: ValidationInfo) -> str:
        psid, customer_no = info.data.get("partner_service_id"), info.data.get("customer_no")
        if psid is not None and customer_no is not None and value != psid + customer_no:
            raise ValueError("must be partnerServiceId + customerNo")
        return value

    @property
    def va_digits(self) -> str:
        """The digits-only VA number used by the order API."""
        return self.partner_service_id.lstrip(" ") + self.customer_no


class InquiryRequest(_VaRequest):
    inquiry_request_id: str = Field(min_length=1, max_length=128)
    channel_code: int | None = None
    language: str | None = None
    additional_info: dict[str, Any] | None = None


class PaymentRequest(_VaRequest):
    virtual_account_name: str | None = None
    payment_request_id: str = Field(min_length=1, max_length=128)
    trx_id: str | None = None
    paid_amount: Amount
    total_amount: Amount | None = None
    reference_no: str | None = None
    flag_advise: Literal["Y", "N"] | None = None

    @property
    def is_advice(self) -> bool:
        """True when the bank says it is re-sending this payment."""
        return self.flag_advise == "Y"


M = TypeVar("M", bound=BaseModel)


def _first_field_error(model: type[BaseModel], exc: ValidationError) -> SnapFieldError:
    """Missing mandatory fields (absent, null or empty) win over badly formatted ones."""
    required = {info.alias for info in model.model_fields.values() if info.is_required()}
    errors = []
    for err in exc.errors():
        loc = err["loc"]
        empty = bool(loc) and loc[0] in required and err.get("input") in (None, "")
        kind: Literal["missing", "invalid"] = "missing" if err["type"] == "missing" or empty else "invalid"
        errors.append(SnapFieldError(kind, ".".join(str(part) for part in loc) or "body"))
    return min(errors, key=lambda e: e.kind != "missing")


def parse_body(model: type[M], raw: bytes) -> M:
    """Validate a raw JSON body as ``model``; raise `SnapFieldError` when it does not fit."""
    try:
        data = decode_json(raw)
    except JsonBodyError:
        raise SnapFieldError("invalid", "body") from None
    if not isinstance(data, dict):
        raise SnapFieldError("invalid", "body")
    try:
        return model.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise _first_field_error(model, exc) from None


def validate_access_token_request(raw: bytes) -> AccessTokenRequest:
    return parse_body(AccessTokenRequest, raw)


def validate_inquiry(raw: bytes) -> InquiryRequest:
    return parse_body(InquiryRequest, raw)


def validate_payment(raw: bytes) -> PaymentRequest:
    return parse_body(PaymentRequest, raw)


def error_response(response_code: str, message: str | None = None) -> dict[str, Any]:
    """A bare ``{"responseCode", "responseMessage"}`` body."""
    return {
        "responseCode": response_code,
        "responseMessage": message or Case.of(response_code).message,
    }


def token_response(token: str, expires_in: int) -> dict[str, Any]:
    """Successful answer of ``POST /snap/v1.0/access-token/b2b``."""
    return {
        **error_response(Case.SUCCESS.code(Service.ACCESS_TOKEN)),
        "accessToken": token,
        "tokenType": "Bearer",
        "expiresIn": str(expires_in),
    }


def _va_data(request: _VaRequest) -> dict[str, Any]:
    return {
        "partnerServiceId": request.partner_service_id,
        "customerNo": request.customer_no,
        "virtualAccountNo": request.virtual_account_no,
    }


def inquiry_response(
    response_code: str,
    request: InquiryRequest,
    *,
    total_amount: int | None = None,
    virtual_account_name: str | None = None,
    reason_en: str | None = None,
    reason_id: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Answer of ``POST /snap/v1.0/transfer-va/inquiry`` for a closed-amount ("C") bill."""
    success = Case.of(response_code) is Case.SUCCESS
    data: dict[str, Any] = {
        "inquiryStatus": "00" if success else "01",
        "inquiryReason": {
            "english": reason_en or ("Success" if success else Case.of(response_code).message),
            "indonesia": reason_id or ("Sukses" if success else "Gagal"),
        },
        **_va_data(request),
        "inquiryRequestId": request.inquiry_request_id,
        "virtualAccountTrxType": "C",
    }
    if virtual_account_name is not None:
        data["virtualAccountName"] = virtual_account_name
    if total_amount is not None:
        data["totalAmount"] = Amount.of(total_amount).model_dump()
    return {**error_response(response_code, message), "virtualAccountData": data}


def payment_response(
    response_code: str,
    request: PaymentRequest,
    flag_status: FlagStatus,
    reason_en: str,
    reason_id: str,
    *,
    message: str | None = None,
) -> dict[str, Any]:
    """Answer of ``POST /snap/v1.0/transfer-va/payment``, echoing the request's fields."""
    data: dict[str, Any] = {
        "paymentFlagStatus": flag_status,
        "paymentFlagReason": {"english": reason_en, "indonesia": reason_id},
        **_va_data(request),
        "paymentRequestId": request.payment_request_id,
        "paidAmount": request.paid_amount.model_dump(),
    }
    optional = {
        "virtualAccountName": request.virtual_account_name,
        "trxId": request.trx_id,
        "totalAmount": request.total_amount.model_dump() if request.total_amount else None,
        "trxDateTime": request.trx_date_time,
        "referenceNo": request.reference_no,
        "flagAdvise": request.flag_advise,
    }
    data.update({key: value for key, value in optional.items() if value is not None})
    return {**error_response(response_code, message), "virtualAccountData": data}
