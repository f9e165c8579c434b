"""Partner events, webhook signatures and delivery rules (pure: no I/O).

* ``cannot_fulfil`` refunds only a PAID order and keeps the reason; ``fulfil`` refuses a serial twice;
* event bodies are ``{"id", "type", "created_at", "data"}`` with ids fixed by their subject;
* secrets: ``whsec_<base64>`` decodes, plain strings are their UTF-8 bytes, bad ones are refused
  at configuration time; signatures match the Standard Webhooks reference vector;
* backoff doubles from the initial delay up to the cap, jitter only shortens it, and the last
  attempt falls on the deadline (3 days), after which the delivery is FAILED.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from order_service.adapters.partners import PartnerConfig, PartnerRegistry
from order_service.adapters.webhooks import encode_body, sign, signing_key
from order_service.domain import partner_events
from order_service.domain.delivery import Attempt, DeliveryStatus, RetryPolicy, Verdict
from order_service.domain.order import IllegalTransition, Order, OrderStatus, price
from pydantic import ValidationError

S = OrderStatus
T0 = datetime(2026, 3, 2, 8, 0, 0, 123456, tzinfo=UTC)
POLICY = RetryPolicy(initial_s=5, max_s=3600, max_age_s=3 * 24 * 3600)


def order_in(status: OrderStatus) -> Order:
    return Order(id=uuid.uuid4(), account_id=uuid.uuid4(), quantity=2, amount=price(2, 2_500), status=status)


def test_cannot_fulfil_refunds_a_paid_order_with_the_reason() -> None:
    order = order_in(S.PAID)
    order.cannot_fulfil("out of stock")
    assert (order.status, order.failure_reason) == (S.REFUND_PENDING, "out of stock")
    assert [(c.old, c.new, c.reason) for c in order.changes] == [(S.PAID, S.REFUND_PENDING, "out of stock")]


@pytest.mark.parametrize("status", [s for s in S if s is not S.PAID])
def test_cannot_fulfil_refuses_every_other_state(status: OrderStatus) -> None:
    order = order_in(status)
    with pytest.raises(IllegalTransition):
        order.cannot_fulfil("out of stock")
    assert (order.status, order.failure_reason, order.changes) == (status, None, [])


def test_fulfil_refuses_a_serial_twice() -> None:
    order = order_in(S.PAID)
    with pytest.raises(ValueError, match="the same serial twice"):
        order.fulfil(["SN-1", "SN-1"])
    assert (order.status, order.serials, order.changes) == (S.PAID, [], [])


def test_order_fulfilled_body() -> None:
    order = order_in(S.PAID)
    order.fulfil(["SN-1", "SN-2"])
    event = partner_events.order_fulfilled(order, [("SN-1", "tok-1"), ("SN-2", "tok-2")], T0)
    assert event.body() == {
        "id": str(event.event_id), "type": "order.fulfilled", "created_at": "2026-03-02T08:00:00.123456Z",
        "data": {"order_id": str(order.id), "quantity": 2,
                 "serials": [{"sn": "SN-1", "token": "tok-1"}, {"sn": "SN-2", "token": "tok-2"}]},
    }
    again = partner_events.order_fulfilled(order, [("SN-1", "tok-1"), ("SN-2", "tok-2")], T0 + timedelta(hours=1))
    assert again.event_id == event.event_id


def test_stamping_completed_body_is_identified_by_its_serial() -> None:
    order_id, stamping_id = uuid.uuid4(), uuid.uuid4()
    wib = datetime(2026, 3, 2, 22, 30, tzinfo=timezone(timedelta(hours=7)))  # Jakarta time
    event = partner_events.stamping_completed(order_id=order_id, stamping_id=stamping_id, sn="SN-9",
                                              document_sha256="ab" * 32, stamped_at=wib, at=T0)
    assert event.body()["data"] == {"stamping_id": str(stamping_id), "sn": "SN-9", "order_id": str(order_id),
                                    "document_sha256": "ab" * 32, "stamped_at": "2026-03-02T15:30:00.000000Z"}
    assert event.body()["type"] == "stamping.completed"
    other = partner_events.stamping_completed(order_id=order_id, stamping_id=uuid.uuid4(), sn="SN-9",
                                              document_sha256="cd" * 32, stamped_at=wib, at=T0)
    assert other.event_id == event.event_id
    assert partner_events.stamping_completed(order_id=order_id, stamping_id=stamping_id, sn="SN-10",
                                             document_sha256="ab" * 32, stamped_at=wib,
                                             at=T0).event_id != event.event_id


def test_order_expired_body_is_identified_by_its_order() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    order.expire()
    event = partner_events.order_expired(order, T0, T0 + timedelta(seconds=1))
    assert event.body() == {
        "id": str(event.event_id), "type": "order.expired", "created_at": "2026-03-02T08:00:01.123456Z",
        "data": {"order_id": str(order.id), "quantity": 2, "amount": order.amount,
                 "expired_at": "2026-03-02T08:00:00.123456Z"},
    }
    assert partner_events.order_expired(order, T0, T0 + timedelta(hours=1)).event_id == event.event_id


def test_stamping_failed_body_is_identified_by_its_job() -> None:
    order_id, stamping_id = uuid.uuid4(), uuid.uuid4()
    event = partner_events.stamping_failed(order_id=order_id, stamping_id=stamping_id, sn="SN-9", error="broken",
                                           failed_at=T0, at=T0)
    assert event.body()["type"] == "stamping.failed"
    assert event.body()["data"] == {"stamping_id": str(stamping_id), "sn": "SN-9", "order_id": str(order_id),
                                    "error": "broken", "failed_at": "2026-03-02T08:00:00.123456Z"}
    # The serial is free again after a failure: another job's failure with it is another event.
    again = partner_events.stamping_failed(order_id=order_id, stamping_id=uuid.uuid4(), sn="SN-9", error="broken",
                                           failed_at=T0, at=T0)
    assert again.event_id != event.event_id


def test_signing_keys() -> None:
    raw = bytes(range(24))
    assert signing_key("whsec_" + base64.b64encode(raw).decode()) == raw
    assert signing_key("my plain secret") == b"my plain secret"
    assert signing_key("whsec-test") == b"whsec-test"  # no underscore: a plain string
    for bad in ("whsec_not base64!", "whsec_"):
        with pytest.raises(ValueError):
            signing_key(bad)


def test_signature_matches_the_standard_webhooks_reference() -> None:
    """The example of the Standard Webhooks specification and its reference libraries."""
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_body_bytes_are_compact_utf8_json() -> None:
    assert encode_body({"id": "x", "data": {"name": "Siti Aminah ✓"}}) == \
        '{"id":"x","data":{"name":"Siti Aminah ✓"}}'.encode()


def test_partner_configuration_checks_webhook_secrets() -> None:
    base = {"partner_id": "casn", "api_key": "k" * 20}
    with pytest.raises(ValidationError, match="needs a webhook_secret"):
        PartnerConfig.model_validate({**base, "webhook_url": "https://casn.example/hooks"})
    with pytest.raises(ValidationError, match="base64"):
        PartnerConfig.model_validate({**base, "webhook_url": "https://casn.example/hooks", "webhook_secret": "whsec_!"})
    with pytest.raises(ValidationError):
        PartnerConfig.model_validate({**base, "webhook_url": "ftp://casn.example/", "webhook_secret": "s"})
    registry = PartnerRegistry([
        PartnerConfig.model_validate({**base, "webhook_url": "https://casn.example/hooks", "webhook_secret": "s3"}),
        PartnerConfig.model_validate({"partner_id": "quiet", "api_key": "q" * 20}),
    ])
    [hooked] = registry.with_webhooks()
    assert (hooked.partner_id, hooked.webhook_url, hooked.webhook_key) == ("casn", "https://casn.example/hooks", b"s3")
    assert "s3" not in repr(hooked)
    quiet = registry.get("quiet")
    assert quiet is not None and quiet.webhook_url is None
    assert registry.get("nobody") is None


def failed(code: int | None = 503) -> Attempt:
    return Attempt(code, "refused", 12.0)


@pytest.mark.parametrize("code", [200, 201, 204, 299])
def test_2xx_delivers(code: int) -> None:
    assert POLICY.judge(Attempt(code, None, 3.0), 7, T0, T0 + timedelta(days=1), 0.5) == \
        Verdict(DeliveryStatus.DELIVERED)


@pytest.mark.parametrize(("failures", "delay_s"), [(1, 5), (2, 10), (3, 20), (8, 640), (10, 2560), (11, 3600),
                                                   (40, 3600), (10_000, 3600)])
def test_backoff_doubles_up_to_the_cap(failures: int, delay_s: float) -> None:
    assert POLICY.delay_s(failures, 0.0) == delay_s
    assert POLICY.delay_s(failures, 0.999999) == pytest.approx(delay_s * 0.8, rel=1e-5)


@pytest.mark.parametrize("code", [None, 199, 301, 400, 410, 500])
def test_anything_but_2xx_is_retried_with_backoff(code: int | None) -> None:
    now = T0 + timedelta(minutes=1)
    assert POLICY.judge(failed(code), 0, T0, now, 0.0) == Verdict(DeliveryStatus.PENDING, now + timedelta(seconds=5))
    assert POLICY.judge(failed(code), 3, T0, now, 0.5) == \
        Verdict(DeliveryStatus.PENDING, now + timedelta(seconds=40 * 0.9))


def test_the_last_attempt_falls_on_the_deadline_then_the_delivery_fails() -> None:
    deadline = T0 + timedelta(days=3)
    near = deadline - timedelta(minutes=10)
    assert POLICY.judge(failed(), 30, T0, near, 0.0) == Verdict(DeliveryStatus.PENDING, deadline)
    assert POLICY.judge(failed(), 31, T0, deadline, 0.0) == Verdict(DeliveryStatus.FAILED)
    assert POLICY.judge(failed(), 31, T0, deadline + timedelta(hours=5), 0.0) == Verdict(DeliveryStatus.FAILED)
