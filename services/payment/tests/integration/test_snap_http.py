"""SNAP endpoints driven by the bank simulator: every answer code, and what each does to the state."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from emeterai_shared.contracts.events import PaymentCaptured
from payment_service.adapters.banksim import BankSimulator
from payment_service.adapters.snap import INQUIRY_PATH, PAYMENT_PATH
from payment_service.adapters.snap.signatures import format_snap_timestamp, sign_transaction
from payment_service.bootstrap import SERVICE
from prometheus_client import REGISTRY

if TYPE_CHECKING:
    from conftest import Payment


CAPTURED = PaymentCaptured.TYPE


def customer_no(bill: dict[str, Any], bank: BankSimulator) -> str:
    return str(bill["virtual_account_no"])[len(bank.partner_service_id):]


async def token_of(bank: BankSimulator) -> str:
    if bank.access_token is None:
        await bank.get_token()
    assert bank.access_token is not None
    return bank.access_token


async def signed_payment(bank: BankSimulator, body: dict[str, Any], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    return await bank.send(bank.build_signed_request(PAYMENT_PATH, body, access_token=await token_of(bank), **kwargs))


async def test_access_token_is_issued_and_stored_hashed(payment: Payment) -> None:
    async with payment.bank() as bank:
        status, body = await bank.get_token()
    assert (status, body["responseCode"], body["tokenType"], body["expiresIn"]) == (200, "2007300", "Bearer", "900")
    token = body["accessToken"]
    row = await payment.pool.fetchrow("SELECT token_hash, client_id FROM snap_tokens WHERE token_hash = $1",
                                      hashlib.sha256(token.encode()).hexdigest())
    assert row["client_id"] == "bank-a"
    assert not await payment.pool.fetchval("SELECT count(*) FROM snap_tokens WHERE token_hash = $1", token)


async def test_token_request_is_refused_for_unknown_client_bad_signature_or_stale_timestamp(
        payment: Payment) -> None:
    async with payment.bank() as bank, payment.bank("bank-b") as other:
        stranger = BankSimulator(payment.base_url, "bank-x", "secret", payment.keys["bank-a"].private_pem,
                                 "bank-x", "1", "1")
        async with stranger:
            assert (await stranger.get_token())[1]["responseCode"] == "4017300"
        path, headers, raw = bank.build_token_request()
        headers["X-SIGNATURE"] = other.build_token_request(timestamp=headers["X-TIMESTAMP"])[1]["X-SIGNATURE"]
        assert await bank.send((path, headers, raw)) == (401, {"responseCode": "4017300",
                                                               "responseMessage": "Unauthorized. Signature"})
        stale = format_snap_timestamp(datetime.now(UTC) - timedelta(minutes=10))
        status, body = await bank.send(bank.build_token_request(timestamp=stale))
        assert (status, body["responseCode"]) == (401, "4017300")
        path, headers, _ = bank.build_token_request()
        status, body = await bank.send((path, headers, b'{"grantType":"password"}'))
        assert (status, body["responseCode"]) == (400, "4007301")


async def test_inquiry_and_payment_success(payment: Payment) -> None:
    bill = await payment.place_order(25_000, quantity=2)
    async with payment.bank() as bank:
        cno = customer_no(bill, bank)
        status, body = await bank.inquiry(cno)
        assert (status, body["responseCode"]) == (200, "2002400")
        data = body["virtualAccountData"]
        assert data["totalAmount"] == {"value": "25000.00", "currency": "IDR"}
        assert data["virtualAccountNo"] == "   77001" + cno and data["virtualAccountName"] == "e-Meterai x2"

        # signed over the minified body, sent pretty-printed
        request = bank.payment_body(cno, 25_000, payment_request_id="pay-success")
        status, body = await signed_payment(bank, request, indent=2)
        assert (status, body["responseCode"]) == (200, "2002500")
        assert body["virtualAccountData"]["paymentFlagStatus"] == "00"
        assert body["virtualAccountData"]["paymentRequestId"] == "pay-success"

        assert (await bank.inquiry(cno))[1]["responseCode"] == "4042414"
    assert (await payment.bill(bill["bill_id"]))["status"] == "PAID"
    payment_row = await payment.pool.fetchrow("SELECT * FROM payments WHERE bill_id = $1", bill["bill_id"])
    assert (payment_row["client_id"], payment_row["payment_request_id"], payment_row["amount"]) == \
        ("bank-a", "pay-success", 25_000)
    [event] = await payment.events(CAPTURED, bill["order_id"])
    assert isinstance(event, PaymentCaptured)
    assert (event.payment_id, event.amount, event.bank, event.late) == (payment_row["payment_id"], 25_000,
                                                                         "bank-a", False)
    # the buyer and the quantity from order.placed, so that minting issues straight from the capture
    assert bill["account_id"] is not None
    assert (event.account_id, event.quantity, event.partner_id) == (bill["account_id"], bill["quantity"], None)
    assert REGISTRY.get_sample_value("emeterai_snap_responses_total",
                                     {"service": "payment", "code": "2002500"}) >= 1


async def test_malformed_bodies_are_refused_and_not_recorded(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank:
        cno = customer_no(bill, bank)
        before = await payment.state()
        requests = await payment.pool.fetchval("SELECT count(*) FROM snap_requests")
        body = bank.payment_body(cno, 12_500)
        body["paidAmount"] = {"value": "12500.00", "currency": "USD"}
        status, answer = await signed_payment(bank, body)
        assert (status, answer["responseCode"]) == (400, "4002501")
        body = bank.payment_body(cno, 12_500)
        body["virtualAccountNo"] = "   77001" + str((int(cno[0]) + 1) % 10) + cno[1:]
        assert (await signed_payment(bank, body))[1]["responseCode"] == "4002501"
        body = bank.payment_body(cno, 12_500)
        del body["paymentRequestId"]
        status, answer = await signed_payment(bank, body)
        assert (status, answer) == (400, {"responseCode": "4002502",
                                          "responseMessage": "Invalid Mandatory Field {paymentRequestId}"})
        status, answer = await signed_payment(bank, bank.payment_body(cno, 12_500), external_id="12-34")
        assert (status, answer["responseCode"]) == (400, "4002501")
        status, answer = await bank.send(bank.build_signed_request(INQUIRY_PATH, {"customerNo": cno},
                                                                   access_token=await token_of(bank)))
        assert (status, answer["responseCode"]) == (400, "4002402")
    assert await payment.state() == before
    assert await payment.pool.fetchval("SELECT count(*) FROM snap_requests") == requests


async def test_unauthorized_requests_change_nothing(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank, payment.bank("bank-b") as other:
        cno = customer_no(bill, bank)
        token = await token_of(bank)
        before = await payment.state()
        requests = await payment.pool.fetchval("SELECT count(*) FROM snap_requests")

        path, headers, raw = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(cno, 12_500),
                                                       access_token=token)
        tampered = raw.replace(b'"N"', b'"Y"')
        assert (await bank.send((path, headers, tampered)))[1] == {"responseCode": "4012500",
                                                                   "responseMessage": "Unauthorized. Signature"}
        other_secret = sign_transaction(other.client_secret, "POST", path, token, raw, headers["X-TIMESTAMP"])
        assert (await bank.send((path, {**headers, "X-SIGNATURE": other_secret}, raw)))[1]["responseCode"] == \
            "4012500"
        # the signed path is the path called, including /snap
        wrong_path = sign_transaction(bank.client_secret, "POST", "/v1.0/transfer-va/payment", token, raw,
                                      headers["X-TIMESTAMP"])
        assert (await bank.send((path, {**headers, "X-SIGNATURE": wrong_path}, raw)))[1]["responseCode"] == \
            "4012500"
        stale = format_snap_timestamp(datetime.now(UTC) - timedelta(minutes=6))
        status, answer = await bank.send(bank.build_signed_request(PAYMENT_PATH, bank.payment_body(cno, 12_500),
                                                                   access_token=token, timestamp=stale))
        assert (status, answer["responseCode"]) == (401, "4012500")
        # bank-a's token presented as bank-b
        assert (await bank.send((path, {**headers, "X-PARTNER-ID": "bank-b"}, raw)))[1]["responseCode"] == \
            "4012500"
        assert (await bank.send((path, {**headers, "X-CLIENT-KEY": "bank-b"}, raw)))[1]["responseCode"] == \
            "4012500"
        status, answer = await bank.send(bank.build_signed_request(INQUIRY_PATH, bank.inquiry_body(cno),
                                                                   access_token=token, timestamp=stale))
        assert (status, answer["responseCode"]) == (401, "4012400")
    assert await payment.state() == before
    assert await payment.pool.fetchval("SELECT count(*) FROM snap_requests") == requests


async def test_invalid_or_expired_token(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank:
        cno = customer_no(bill, bank)
        before = await payment.state()
        status, answer = await signed_payment(bank, bank.payment_body(cno, 12_500))  # fetches a real token
        token = bank.access_token
        assert answer["responseCode"] == "2002500"
        bank.access_token = "not-a-token"
        status, answer = await bank.pay(cno, 12_500)
        assert (status, answer) == (401, {"responseCode": "4012501", "responseMessage": "Invalid Token (B2B)"})
        assert (await bank.inquiry(cno))[1]["responseCode"] == "4012401"
        await payment.pool.execute("UPDATE snap_tokens SET expires_at = now() - interval '1 second' "
                                   "WHERE token_hash = $1", hashlib.sha256(str(token).encode()).hexdigest())
        # an api process that has not seen the token yet (this one remembers it until its expiry,
        # which only its clock reaches: tests/unit/test_tokens.py) finds it expired
        other_pool = await payment.new_pool()
        try:
            async with payment.api(other_pool) as other_url, payment.bank(base_url=other_url) as other:
                other.access_token = token
                assert (await other.pay(cno, 12_500, payment_request_id="other"))[1]["responseCode"] == "4012501"
        finally:
            await other_pool.close()
        bank.access_token = token
        path, headers, raw = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(cno, 12_500),
                                                       access_token=str(token))
        del headers["Authorization"]
        assert (await bank.send((path, headers, raw)))[1]["responseCode"] == "4012501"
    after = await payment.state()
    assert after != before  # the one valid payment captured; the refused ones added nothing more
    assert await payment.pool.fetchval("SELECT count(*) FROM payments WHERE bill_id = $1", bill["bill_id"]) == 1


async def test_va_not_found_is_recorded_without_state_change(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank, payment.bank("bank-b") as other:
        before = await payment.state()
        status, answer = await bank.pay("000000000000", 12_500, external_id="1001")
        assert (status, answer["responseCode"]) == (404, "4042512")
        assert answer["virtualAccountData"]["paymentFlagStatus"] == "01"
        assert (await bank.inquiry("000000000000"))[1]["responseCode"] == "4042412"
        # bank-b cannot see bank-a's bill, even under its own company code
        assert (await other.pay(customer_no(bill, bank), 12_500))[1]["responseCode"] == "4042512"
        assert (await other.inquiry(customer_no(bill, bank)))[1]["responseCode"] == "4042412"
    assert await payment.state() == before
    assert await payment.pool.fetchval("SELECT response_code FROM snap_requests WHERE client_id = 'bank-a' "
                                       "AND external_id = '1001'") == "4042512"


async def test_invalid_amount(payment: Payment) -> None:
    bill = await payment.place_order(12_500)
    async with payment.bank() as bank:
        cno = customer_no(bill, bank)
        before = await payment.state()
        for amount in (12_000, 12_501):
            status, answer = await bank.pay(cno, amount)
            assert (status, answer["responseCode"]) == (404, "4042513")
            assert answer["virtualAccountData"]["paymentFlagStatus"] == "01"
        body = bank.payment_body(cno, 12_500)
        body["paidAmount"]["value"] = "12500.50"
        assert (await signed_payment(bank, body))[1]["responseCode"] == "4042513"
    assert await payment.state() == before


async def test_bill_already_paid_by_another_payment(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank:
        cno = customer_no(bill, bank)
        assert (await bank.pay(cno, 12_500, payment_request_id="first"))[1]["responseCode"] == "2002500"
        before = await payment.state()
        status, answer = await bank.pay(cno, 12_500, payment_request_id="second")
        assert (status, answer["responseCode"]) == (404, "4042514")
        assert answer["virtualAccountData"]["paymentFlagStatus"] == "01"
        # a paymentRequestId already captured for another bill is a conflict
        other_bill = await payment.place_order()
        before = await payment.state()
        status, answer = await bank.pay(customer_no(other_bill, bank), 12_500, payment_request_id="first")
        assert (status, answer["responseCode"]) == (409, "4092500")
    assert await payment.state() == before
    assert len(await payment.events(CAPTURED, bill["order_id"])) == 1


async def test_replay_gets_the_first_outcome(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank:
        cno = customer_no(bill, bank)
        token = await token_of(bank)
        wrong = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(cno, 1, payment_request_id="r-1"),
                                          access_token=token)
        assert (await bank.send(wrong))[1]["responseCode"] == "4042513"
        right = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(cno, 12_500, payment_request_id="r-2"),
                                          access_token=token)
        status, first = await bank.send(right)
        assert (status, first["responseCode"]) == (200, "2002500")
        before = await payment.state()

        status, replay = await bank.send(right)
        assert (status, replay["responseCode"], replay["responseMessage"]) == (404, "4042518", "Inconsistent Request")
        assert replay["virtualAccountData"] == first["virtualAccountData"]
        status, replay = await bank.send(wrong)  # the first outcome of that one was a rejection
        assert (status, replay["responseCode"]) == (404, "4042518")
        assert replay["virtualAccountData"]["paymentFlagStatus"] == "01"
        # same X-EXTERNAL-ID, same paymentRequestId, other content: a conflict
        external_id = right[1]["X-EXTERNAL-ID"]
        changed = bank.payment_body(cno, 12_500, payment_request_id="r-2", flag_advise="Y")
        status, answer = await signed_payment(bank, changed, external_id=external_id)
        assert (status, answer["responseCode"]) == (409, "4092500")
        status, answer = await signed_payment(bank, bank.payment_body(cno, 12_500), external_id=external_id)
        assert (status, answer["responseCode"]) == (409, "4092500")
    assert await payment.state() == before
    assert len(await payment.events(CAPTURED, bill["order_id"])) == 1


async def test_resent_payment_with_another_external_id_is_accepted_once(payment: Payment) -> None:
    bill = await payment.place_order()
    async with payment.bank() as bank:
        cno = customer_no(bill, bank)
        assert (await bank.pay(cno, 12_500, payment_request_id="resend"))[1]["responseCode"] == "2002500"
        before = await payment.state()
        status, answer = await bank.pay(cno, 12_500, payment_request_id="resend", flag_advise="Y")
        assert (status, answer["responseCode"]) == (200, "2002500")
        assert answer["virtualAccountData"]["paymentFlagStatus"] == "00"
        assert (await bank.pay(cno, 12_600, payment_request_id="resend"))[1]["responseCode"] == "4042513"
    assert await payment.state() == before


async def test_expired_bill_and_late_advice(payment: Payment) -> None:
    late_bill = await payment.place_order()
    expired_bill = await payment.place_order()
    ids = [late_bill["bill_id"], expired_bill["bill_id"]]
    await payment.pool.execute("UPDATE bills SET expires_at = now() - interval '10 minutes' "
                               "WHERE bill_id = ANY($1::uuid[])", ids)
    expires_at = (await payment.bill(late_bill["bill_id"]))["expires_at"]
    async with payment.bank() as bank:
        late_cno, cno = customer_no(late_bill, bank), customer_no(expired_bill, bank)
        before = await payment.state()
        # past due, not yet swept: still refused
        status, answer = await bank.pay(late_cno, 12_500)
        assert (status, answer["responseCode"]) == (404, "4042519")
        assert (await bank.inquiry(late_cno))[1]["responseCode"] == "4042419"
        assert await payment.state() == before

        job = next(j for j in SERVICE.periodic if j.name == "expire-bills")
        await job.run(payment.deps)
        assert (await payment.bill(expired_bill["bill_id"]))["status"] == "EXPIRED"
        before = await payment.state()
        status, answer = await bank.pay(cno, 12_500)
        assert (status, answer["responseCode"]) == (404, "4042519")
        assert answer["virtualAccountData"]["paymentFlagStatus"] == "01"
        after_expiry = bank.payment_body(cno, 12_500, flag_advise="Y")
        after_expiry["trxDateTime"] = format_snap_timestamp(expires_at + timedelta(seconds=1))
        assert (await signed_payment(bank, after_expiry))[1]["responseCode"] == "4042519"
        assert await payment.state() == before

        # the bank took the money before the bill expired and re-sends the notification
        advice = bank.payment_body(late_cno, 12_500, flag_advise="Y")
        advice["trxDateTime"] = format_snap_timestamp(expires_at - timedelta(minutes=1))
        status, answer = await signed_payment(bank, advice)
        assert (status, answer["responseCode"]) == (200, "2002500")
    assert (await payment.bill(late_bill["bill_id"]))["status"] == "PAID"
    [event] = await payment.events(CAPTURED, late_bill["order_id"])
    assert isinstance(event, PaymentCaptured) and event.late
    assert await payment.pool.fetchval("SELECT late FROM payments WHERE bill_id = $1", late_bill["bill_id"])


async def test_tokens_are_shared_and_a_lost_database_is_5042500_timeout(payment: Payment) -> None:
    """A fault (this api's database out of reach) is SNAP's Timeout, which the bank follows with an
    advice; an internal error proper (``5002x00``) is in ``test_snap_faults``."""
    bill = await payment.place_order()
    pool = await payment.new_pool()
    async with payment.api(pool) as other_api, payment.bank() as bank:
        cno = customer_no(bill, bank)
        await bank.get_token()  # issued by the session's api
        other = payment.bank(base_url=other_api)
        other.access_token = bank.access_token
        async with other:
            assert (await other.inquiry(cno))[1]["responseCode"] == "2002400"
            before = await payment.state()
            await pool.close()  # this api process loses its database
            status, answer = await other.pay(cno, 12_500)
            assert (status, answer) == (504, {"responseCode": "5042500", "responseMessage": "Timeout"})
            status, answer = await other.inquiry(cno)
            assert (status, answer["responseCode"]) == (504, "5042400")
    assert await payment.state() == before


async def test_a_body_that_is_not_json_is_4002x01_before_any_authentication(payment: Payment) -> None:
    """A bank debugging its integration learns that its body is broken (invalid field format), not
    that its signature is: checked before the token and the signature; nothing is recorded."""
    bill = await payment.place_order()
    broken = [b"{not json", b"", b"\xff\xfe{}", b"[" * 50_000, b'{"a":' * 50_000, b'{"customerNo": "1\\u0000"}']
    async with payment.bank() as bank:
        token = await token_of(bank)
        _, headers, _ = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(customer_no(bill, bank), 12_500),
                                                  access_token=token)
        requests = await payment.pool.fetchval("SELECT count(*) FROM snap_requests")
        for raw in broken:
            for where, service, sent in ((PAYMENT_PATH, "25", headers), (INQUIRY_PATH, "24", {}),
                                         (PAYMENT_PATH, "25", {}), ("/snap/v1.0/access-token/b2b", "73", {})):
                status, answer = await bank.send((where, sent, raw))
                assert (status, answer) == (400, {"responseCode": f"400{service}01",
                                                  "responseMessage": "Invalid Field Format {body}"}), raw[:20]
        # well-formed JSON with a bad signature is still the signature's 401
        status, answer = await bank.send((PAYMENT_PATH, {**headers, "X-SIGNATURE": "AAAA"}, b'{"a": 1}'))
        assert (status, answer["responseCode"]) == (401, "4012500")
        assert await payment.pool.fetchval("SELECT count(*) FROM snap_requests") == requests


async def test_a_body_not_in_its_content_encoding_is_4002x01(payment: Payment) -> None:
    async with payment.bank() as bank:
        status, answer = await bank.send((PAYMENT_PATH, {"Content-Encoding": "gzip", "Connection": "close"},
                                          b'{"not": "gzip"}'))
    assert (status, answer) == (400, {"responseCode": "4002501", "responseMessage": "Invalid Field Format {body}"})


async def test_the_banks_are_listed_publicly_without_their_secrets(payment: Payment) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{payment.base_url}/v1/banks") as r:
        assert r.status == 200 and "max-age" in r.headers["Cache-Control"]
        listed = (await r.json())["banks"]
    configured = [payment.keys[c].config for c in payment.keys]
    assert [b["client_id"] for b in listed] == [c["client_id"] for c in configured]
    for bank, config in zip(listed, configured, strict=True):
        assert bank == {"client_id": config["client_id"], "name": config.get("name") or config["client_id"],
                        "partner_service_id": config["partner_service_id"]}
    assert [b["name"] for b in listed][:2] == ["bank-a", "Bank Dua (uji)"]
    assert not any("secret" in key or "key" in key for bank in listed for key in bank)
