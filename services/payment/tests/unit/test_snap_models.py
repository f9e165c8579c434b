import json
from typing import Any

import pytest
from payment_service.adapters.snap.models import (
    Amount,
    PaymentRequest,
    SnapFieldError,
    SnapResult,
    inquiry_response,
    pad_partner_service_id,
    payment_response,
    snap_json,
    snap_virtual_account_no,
    token_response,
    va_digits,
    validate_access_token_request,
    validate_inquiry,
    validate_payment,
)

PSID = "   77001"


def payment(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "partnerServiceId": PSID,
        "customerNo": "0000001",
        "virtualAccountNo": PSID + "0000001",
        "virtualAccountName": "Budi",
        "paymentRequestId": "req-1",
        "trxId": "trx-1",
        "paidAmount": {"value": "25000.00", "currency": "IDR"},
        "totalAmount": {"value": "25000.00", "currency": "IDR"},
        "trxDateTime": "2024-09-04T10:00:00+07:00",
        "referenceNo": "ref-1",
        "flagAdvise": "N",
        "additionalInfo": {"channel": "ATM"},
    }
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return body


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def field_error(body: Any) -> tuple[str, str]:
    with pytest.raises(SnapFieldError) as info:
        validate_payment(raw(body))
    return info.value.kind, info.value.field


def test_valid_payment() -> None:
    request = validate_payment(raw(payment()))
    assert request.customer_no == "0000001"
    assert request.va_digits == "770010000001"
    assert request.paid_amount.to_rupiah() == 25000
    assert request.total_amount is not None
    assert not request.is_advice
    assert request.model_extra == {"additionalInfo": {"channel": "ATM"}}


def test_minimal_payment_and_advice() -> None:
    optional = ["virtualAccountName", "trxId", "totalAmount", "trxDateTime", "referenceNo"]
    body = payment(flagAdvise="Y", additionalInfo=..., **dict.fromkeys(optional, ...))
    request = validate_payment(raw(body))
    assert request.is_advice
    assert request.trx_id is None


MANDATORY = ["partnerServiceId", "customerNo", "virtualAccountNo", "paymentRequestId", "paidAmount"]


@pytest.mark.parametrize("field", MANDATORY)
@pytest.mark.parametrize("absent", [..., None, ""])
def test_missing_mandatory_field(field: str, absent: Any) -> None:
    assert field_error(payment(**{field: absent})) == ("missing", field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partnerServiceId", "77001"),
        ("partnerServiceId", "  77001 "),
        ("partnerServiceId", "   7700a"),
        ("partnerServiceId", "        "),
        ("partnerServiceId", 77001),
        ("customerNo", "00A1"),
        ("customerNo", "1" * 21),
        ("customerNo", 1),
        ("virtualAccountNo", "770010000001"),
        ("virtualAccountNo", PSID + "0000002"),
        ("paymentRequestId", "x" * 129),
        ("paymentRequestId", 5),
        ("paidAmount", "25000.00"),
        ("flagAdvise", "X"),
        ("totalAmount", {"value": "1", "currency": "IDR"}),
    ],
)
def test_invalid_field(field: str, value: Any) -> None:
    kind, reported = field_error(payment(**{field: value}))
    assert (kind, reported.split(".")[0]) == ("invalid", field)


@pytest.mark.parametrize(
    ("amount", "kind", "field"),
    [
        ({"value": "12500.5", "currency": "IDR"}, "invalid", "paidAmount.value"),
        ({"value": "abc", "currency": "IDR"}, "invalid", "paidAmount.value"),
        ({"value": "-12500.00", "currency": "IDR"}, "invalid", "paidAmount.value"),
        ({"value": "12500", "currency": "IDR"}, "invalid", "paidAmount.value"),
        ({"value": 12500.0, "currency": "IDR"}, "invalid", "paidAmount.value"),
        ({"value": "12500.00", "currency": "USD"}, "invalid", "paidAmount.currency"),
        ({"value": "12500.00"}, "missing", "paidAmount.currency"),
        ({"value": "", "currency": "IDR"}, "missing", "paidAmount.value"),
    ],
)
def test_amount_errors(amount: dict[str, Any], kind: str, field: str) -> None:
    assert field_error(payment(paidAmount=amount)) == (kind, field)


def test_amount_to_rupiah() -> None:
    assert Amount.model_validate({"value": "12500.00", "currency": "IDR"}).to_rupiah() == 12500
    assert Amount.model_validate({"value": "0.00", "currency": "IDR"}).to_rupiah() == 0
    with pytest.raises(ValueError):
        Amount.model_validate({"value": "12500.50", "currency": "IDR"}).to_rupiah()
    assert Amount.of(10000).model_dump() == {"value": "10000.00", "currency": "IDR"}
    with pytest.raises(ValueError):
        Amount.of(-1)


def test_missing_wins_over_invalid() -> None:
    assert field_error(payment(partnerServiceId="bad", paidAmount=...)) == ("missing", "paidAmount")


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'"x"', b"null"])
def test_non_object_body(body: bytes) -> None:
    with pytest.raises(SnapFieldError) as info:
        validate_payment(body)
    assert (info.value.kind, info.value.field) == ("invalid", "body")


def test_field_error_response() -> None:
    from payment_service.adapters.snap.codes import Service

    error = SnapFieldError("missing", "paidAmount.value")
    assert snap_json(error.response(Service.PAYMENT)) == {
        "responseCode": "4002502",
        "responseMessage": "Invalid Mandatory Field {paidAmount.value}",
    }
    assert SnapFieldError("invalid", "customerNo").case.code(Service.INQUIRY) == "4002401"


def test_snake_case_names_are_not_accepted() -> None:
    body = payment(customerNo=...)
    body["customer_no"] = "0000001"
    assert field_error(body) == ("missing", "customerNo")


def test_access_token_request() -> None:
    assert validate_access_token_request(b'{"grantType":"client_credentials"}').grant_type
    with pytest.raises(SnapFieldError) as info:
        validate_access_token_request(b'{"grantType":"password"}')
    assert (info.value.kind, info.value.field) == ("invalid", "grantType")
    with pytest.raises(SnapFieldError) as info:
        validate_access_token_request(b"{}")
    assert (info.value.kind, info.value.field) == ("missing", "grantType")


def test_inquiry_validation() -> None:
    body = {
        "partnerServiceId": PSID,
        "customerNo": "42",
        "virtualAccountNo": PSID + "42",
        "inquiryRequestId": "inq-1",
        "channelCode": 6011,
        "somethingElse": True,
    }
    request = validate_inquiry(raw(body))
    assert request.va_digits == "7700142"
    with pytest.raises(SnapFieldError) as info:
        validate_inquiry(raw({**body, "inquiryRequestId": None}))
    assert (info.value.kind, info.value.field) == ("missing", "inquiryRequestId")


def test_va_helpers() -> None:
    assert pad_partner_service_id("77001") == PSID
    assert pad_partner_service_id("12345678") == "12345678"
    for bad in ["", "123456789", "12a", " 123", "-1"]:
        with pytest.raises(ValueError):
            pad_partner_service_id(bad)
    assert va_digits("77001", "0000001") == "770010000001"
    assert snap_virtual_account_no("77001", "0000001") == PSID + "0000001"
    with pytest.raises(ValueError):
        va_digits("77001", "12x")
    with pytest.raises(ValueError):
        snap_virtual_account_no("77001", "1" * 21)


def test_token_response() -> None:
    assert snap_json(token_response("abc", 900)) == {
        "responseCode": "2007300",
        "responseMessage": "Successful",
        "accessToken": "abc",
        "tokenType": "Bearer",
        "expiresIn": "900",
    }
    assert snap_json(SnapResult.of("4017300")) == {
        "responseCode": "4017300",
        "responseMessage": "Unauthorized",
    }


def test_payment_response_echoes_request() -> None:
    request = validate_payment(raw(payment()))
    body = snap_json(payment_response("2002500", request, "00", "Success", "Sukses"))
    assert body["responseCode"] == "2002500"
    assert body["responseMessage"] == "Successful"
    data = body["virtualAccountData"]
    assert data["paymentFlagStatus"] == "00"
    assert data["paymentFlagReason"] == {"english": "Success", "indonesia": "Sukses"}
    for key in [
        "partnerServiceId",
        "customerNo",
        "virtualAccountNo",
        "paymentRequestId",
        "paidAmount",
        "totalAmount",
        "trxId",
        "referenceNo",
        "virtualAccountName",
    ]:
        assert data[key] == payment()[key]
    json.dumps(body)


def test_payment_response_rejection_omits_absent_optionals() -> None:
    body = payment(trxId=..., totalAmount=..., virtualAccountName=...)
    request: PaymentRequest = validate_payment(raw(body))
    answer = snap_json(payment_response(
        "4042514", request, "01", "Bill has been paid", "Tagihan sudah dibayar", message="Paid Bill"
    ))
    assert answer["responseCode"] == "4042514"
    assert answer["virtualAccountData"]["paymentFlagStatus"] == "01"
    assert "trxId" not in answer["virtualAccountData"]
    assert "totalAmount" not in answer["virtualAccountData"]


def test_inquiry_response() -> None:
    request = validate_inquiry(
        raw(
            {
                "partnerServiceId": PSID,
                "customerNo": "42",
                "virtualAccountNo": PSID + "42",
                "inquiryRequestId": "inq-1",
            }
        )
    )
    ok = snap_json(inquiry_response("2002400", request, total_amount=25000, virtual_account_name="Budi"))
    data = ok["virtualAccountData"]
    assert ok["responseCode"] == "2002400"
    assert data["inquiryStatus"] == "00"
    assert data["totalAmount"] == {"value": "25000.00", "currency": "IDR"}
    assert data["inquiryRequestId"] == "inq-1"
    assert data["virtualAccountNo"] == PSID + "42"
    assert data["virtualAccountTrxType"] == "C"
    missing = snap_json(inquiry_response("4042412", request))
    assert missing["responseMessage"] == "Invalid Bill/Virtual Account [Not Found]"
    assert missing["virtualAccountData"]["inquiryStatus"] == "01"
    assert "totalAmount" not in missing["virtualAccountData"]
