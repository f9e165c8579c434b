import pytest
from payment_service.adapters.snap.codes import Case, Service, code, default_message, http_status


@pytest.mark.parametrize(
    ("case", "service", "expected"),
    [
        (Case.SUCCESS, Service.ACCESS_TOKEN, "2007300"),
        (Case.SUCCESS, Service.INQUIRY, "2002400"),
        (Case.SUCCESS, Service.PAYMENT, "2002500"),
        (Case.INVALID_FIELD_FORMAT, Service.PAYMENT, "4002501"),
        (Case.MISSING_MANDATORY_FIELD, Service.PAYMENT, "4002502"),
        (Case.UNAUTHORIZED, Service.ACCESS_TOKEN, "4017300"),
        (Case.UNAUTHORIZED, Service.PAYMENT, "4012500"),
        (Case.INVALID_TOKEN, Service.INQUIRY, "4012401"),
        (Case.VA_NOT_FOUND, Service.PAYMENT, "4042512"),
        (Case.INVALID_AMOUNT, Service.PAYMENT, "4042513"),
        (Case.BILL_ALREADY_PAID, Service.PAYMENT, "4042514"),
        (Case.INCONSISTENT_REQUEST, Service.PAYMENT, "4042518"),
        (Case.VA_EXPIRED, Service.INQUIRY, "4042419"),
        (Case.CONFLICT, Service.PAYMENT, "4092500"),
        (Case.INTERNAL_ERROR, Service.PAYMENT, "5002500"),
    ],
)
def test_case_codes(case: Case, service: Service, expected: str) -> None:
    assert case.code(service) == expected
    assert http_status(expected) == case.http_status
    assert Case.of(expected) is case
    assert default_message(expected) == case.message


def test_code_helper() -> None:
    assert code(404, Service.PAYMENT, 12) == "4042512"
    assert code(400, "24", "01") == "4002401"
    with pytest.raises(ValueError):
        code(40, "25", 1)
    with pytest.raises(ValueError):
        code(400, "2a", 1)
    with pytest.raises(ValueError):
        code(400, "25", 100)


@pytest.mark.parametrize("bad", ["200250", "20025000", "abcdefg", "4042599"])
def test_unknown_codes(bad: str) -> None:
    with pytest.raises(ValueError):
        Case.of(bad)


def test_messages() -> None:
    assert default_message("2007300") == "Successful"
    assert default_message("4012401") == "Invalid Token (B2B)"
    assert default_message("4042514") == "Paid Bill"
