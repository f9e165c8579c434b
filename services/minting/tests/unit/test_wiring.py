"""The service's declarations, read without a running process: queues, handlers, jobs, issuance rules."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from minting_service.bootstrap import SERVICE
from minting_service.dependencies import MintingDeps
from minting_service.domain.issuance import refund_deadline
from minting_service.domain.serial import generate, is_valid, is_well_formed

NOW = datetime(2024, 9, 6, 10, 0, tzinfo=UTC)


def test_every_handler_names_only_what_the_dependencies_provide() -> None:
    provided = {f.name for f in dataclasses.fields(MintingDeps)}
    assert [(s.queue, s.message.TYPE) for s in SERVICE.subscriptions] == [
        ("minting.on_payment_captured", "payment.captured.v1"),
        ("minting.on_order_paid", "order.paid.v1"),
        ("minting.on_document_stamped", "stamping.document_stamped.v1"),
        ("minting.on_serials_voided", "stamping.serials_voided.v1"),
    ]
    for sub in SERVICE.subscriptions:
        assert set(sub.needs()) <= provided, sub.queue
    assert [job.name for job in SERVICE.periodic] == ["stock-gauge", "serve-waiting-orders"]


def test_a_wait_is_allowed_only_with_a_positive_stock_wait() -> None:
    assert refund_deadline(NOW, 7200) == NOW + timedelta(hours=2)
    assert refund_deadline(NOW, 0) is None


def test_a_well_formed_serial_may_still_fail_its_check() -> None:
    sn = generate()
    mistyped = sn[:-1] + ("1" if sn[-1] == "0" else "0")
    assert is_well_formed(mistyped) and not is_valid(mistyped)
    assert not is_well_formed(sn.lower()) and not is_well_formed(sn[:-1]) and not is_well_formed(sn + "0")
