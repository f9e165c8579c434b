"""SNAP virtual-account request bodies, their validation, and the biller's answers.

The answers are the models the OpenAPI document names (``SnapResult`` and its subclasses): the
endpoints send them (``respond(..., exclude_none=True)``, the dump ``snap_json`` keeps in
``snap_requests``), so the document and the wire cannot drift apart.

Validation tells a missing mandatory field (case 02) from a badly formatted one (case 01)
through `SnapFieldError`. Attributes are snake_case; the JSON names are the SNAP camelCase
aliases.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self, TypeVar

from emeterai_shared.http import JsonBodyError, decode_json
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from payment_service.adapters.snap.codes import Case, Service

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

    def response(self, service: Service) -> SnapResult:
        """The error answer to give."""
        return SnapResult.of(self.case.code(service), self.message)


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
    def of(cls, rupiah: int) -> Amount:
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


class SnapResult(BaseModel):
    """Every SNAP answer: ``responseCode`` = HTTP status (3) + service (2) + case (2)."""

    responseCode: str
    responseMessage: str

    @classmethod
    def of(cls, response_code: str, message: str | None = None) -> Self:
        """An answer with ``response_code`` and its message (default: the case's own)."""
        return cls(responseCode=response_code, responseMessage=message or Case.of(response_code).message)


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
    paymentFlagStatus: FlagStatus
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


def snap_json(answer: SnapResult) -> dict[str, Any]:
    """An answer as it goes on the wire (and into ``snap_requests.response``): absent optional
    fields are left out, not ``null``."""
    return answer.model_dump(mode="json", by_alias=True, exclude_none=True)


def token_response(token: str, expires_in: int) -> AccessTokenAnswer:
    """Successful answer of ``POST /snap/v1.0/access-token/b2b``."""
    return AccessTokenAnswer(responseCode=Case.SUCCESS.code(Service.ACCESS_TOKEN), responseMessage=Case.SUCCESS.message,
                             accessToken=token, tokenType="Bearer", expiresIn=str(expires_in))


def inquiry_response(
    response_code: str,
    request: InquiryRequest,
    *,
    total_amount: int | None = None,
    virtual_account_name: str | None = None,
    reason_en: str | None = None,
    reason_id: str | None = None,
    message: str | None = None,
) -> InquiryAnswer:
    """Answer of ``POST /snap/v1.0/transfer-va/inquiry`` for a closed-amount ("C") bill."""
    case = Case.of(response_code)
    success = case is Case.SUCCESS
    data = InquiryData(
        inquiryStatus="00" if success else "01",
        inquiryReason=Reason(english=reason_en or ("Success" if success else case.message),
                             indonesia=reason_id or ("Sukses" if success else "Gagal")),
        partnerServiceId=request.partner_service_id,
        customerNo=request.customer_no,
        virtualAccountNo=request.virtual_account_no,
        inquiryRequestId=request.inquiry_request_id,
        virtualAccountTrxType="C",
        virtualAccountName=virtual_account_name,
        totalAmount=Amount.of(total_amount) if total_amount is not None else None,
    )
    return InquiryAnswer(responseCode=response_code, responseMessage=message or case.message,
                         virtualAccountData=data)


def payment_response(
    response_code: str,
    request: PaymentRequest,
    flag_status: FlagStatus,
    reason_en: str,
    reason_id: str,
    *,
    message: str | None = None,
) -> PaymentFlagAnswer:
    """Answer of ``POST /snap/v1.0/transfer-va/payment``, echoing the request's fields."""
    data = PaymentData(
        paymentFlagStatus=flag_status,
        paymentFlagReason=Reason(english=reason_en, indonesia=reason_id),
        partnerServiceId=request.partner_service_id,
        customerNo=request.customer_no,
        virtualAccountNo=request.virtual_account_no,
        paymentRequestId=request.payment_request_id,
        paidAmount=request.paid_amount,
        virtualAccountName=request.virtual_account_name,
        trxId=request.trx_id,
        totalAmount=request.total_amount,
        trxDateTime=request.trx_date_time,
        referenceNo=request.reference_no,
        flagAdvise=request.flag_advise,
    )
    return PaymentFlagAnswer(responseCode=response_code,
                             responseMessage=message or Case.of(response_code).message, virtualAccountData=data)


QrStatus = Literal["00", "01", "02", "03", "04", "05", "06", "07"]
"""SNAP latestTransactionStatus: 00 success, 01 initiated, 02 paying, 03 pending, 04 refunded,
05 cancelled, 06 failed, 07 not found."""


class QrNotifyRequest(_Body):
    """``POST /snap/v1.0/qr/qr-mpm-notify``: the acquirer tells us what became of a QR."""

    original_reference_no: str = Field(min_length=1, max_length=64, description="the acquirer's referenceNo")
    original_partner_reference_no: str = Field(min_length=1, max_length=64, description="our partnerReferenceNo")
    latest_transaction_status: QrStatus
    transaction_status_desc: str | None = None
    amount: Amount
    additional_info: dict[str, Any] | None = Field(default=None, description="rrn, issuer, ...")

    @property
    def rrn(self) -> str | None:
        value = (self.additional_info or {}).get("rrn")
        return str(value) if value else None


def validate_qr_notify(raw: bytes) -> QrNotifyRequest:
    return parse_body(QrNotifyRequest, raw)
