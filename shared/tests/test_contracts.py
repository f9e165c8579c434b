"""Message contracts: the registry, strict producers and tolerant consumers."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from emeterai_shared.contracts import (
    DuplicateMessageType,
    Message,
    MessageDecodeError,
    UnknownMessageType,
    base,
    decode,
    message,
    model_for,
    registry,
)
from emeterai_shared.contracts.events import PaymentCaptured
from emeterai_testkit.probe import ProbeSent
from pydantic import ValidationError


@pytest.fixture
def scratch_types() -> Iterator[list[str]]:
    """Type names a test registers; they leave the process-wide registry afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        base._registry.pop(name, None)


def test_registry_knows_the_probe_event() -> None:
    assert ProbeSent.TYPE == "platform.probe_sent.v1"
    assert model_for("platform.probe_sent.v1") is ProbeSent
    assert registry()["platform.probe_sent.v1"] is ProbeSent
    with pytest.raises(UnknownMessageType):
        model_for("platform.nothing_happened.v1")


def test_duplicate_type_raises_at_decoration_time() -> None:
    with pytest.raises(DuplicateMessageType, match=r"platform\.probe_sent\.v1"):

        @message("platform.probe_sent.v1")
        class Impostor(Message):
            seq: int

    assert model_for("platform.probe_sent.v1") is ProbeSent


def test_duplicate_type_raises_when_a_module_is_imported(tmp_path: Path) -> None:
    source = tmp_path / "impostor_events.py"
    source.write_text(
        "from emeterai_shared.contracts import Message, message\n\n"
        "@message('platform.probe_sent.v1')\n"
        "class ProbeSentAgain(Message):\n"
        "    seq: int\n"
    )
    spec = importlib.util.spec_from_file_location("impostor_events", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        with pytest.raises(DuplicateMessageType):
            spec.loader.exec_module(module)
    finally:
        sys.modules.pop("impostor_events", None)
    assert model_for("platform.probe_sent.v1") is ProbeSent


def test_new_type_registers_once(scratch_types: list[str]) -> None:
    scratch_types.append("testing.widget_made.v1")

    @message("testing.widget_made.v1")
    class WidgetMade(Message):
        n: int

    assert model_for("testing.widget_made.v1") is WidgetMade
    assert WidgetMade.TYPE == "testing.widget_made.v1"
    with pytest.raises(DuplicateMessageType):

        @message("testing.widget_made.v1")
        class WidgetMadeAgain(Message):
            n: int

    assert model_for("testing.widget_made.v1") is WidgetMade


@pytest.mark.parametrize("name", [
    "", "probe_sent", "platform.probe_sent", "platform.probe_sent.1", "platform.probe_sent.V1",
    "Platform.probe_sent.v1", "platform.ProbeSent.v1", "platform.probe-sent.v1",
    "platform.probe_sent.v1.extra", "1platform.probe_sent.v1", "platform.probe_sent.v",
    " platform.probe_sent.v1",
])
def test_bad_type_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="must look like"):

        @message(name)
        class Badly(Message):
            n: int

    assert name not in registry()


def test_producer_model_is_strict() -> None:
    ok = ProbeSent(seq=3, note="x", sent_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert ok.seq == 3
    with pytest.raises(ValidationError, match="extra"):
        ProbeSent(seq=1, colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ProbeSent(seq="1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ProbeSent(seq=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ProbeSent(seq=1, sent_at="2024-01-01T00:00:00Z")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ProbeSent()  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ok.seq = 4  # type: ignore[misc]


def test_consumer_decode_is_tolerant() -> None:
    body = b'{"seq": "7", "note": "hi", "sent_at": "2024-05-01T10:00:00Z", "added_in_v1_1": [1, 2]}'
    decoded = decode("platform.probe_sent.v1", body)
    assert isinstance(decoded, ProbeSent)
    assert decoded.seq == 7 and isinstance(decoded.seq, int)
    assert decoded.note == "hi"
    assert decoded.sent_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert not hasattr(decoded, "added_in_v1_1")
    assert "added_in_v1_1" not in decoded.model_dump()


def test_a_payment_captured_of_an_older_producer_still_decodes() -> None:
    """``method`` and ``reference_no`` were added to payment.captured.v1 for receipts: optional."""
    body = (b'{"order_id": "00000000-0000-0000-0000-000000000001", "bill_id": "00000000-0000-0000-0000-000000000002",'
            b' "payment_id": "00000000-0000-0000-0000-000000000003", "amount": 25000, "bank": "bank-a",'
            b' "payment_request_id": "PRQ-1", "captured_at": "2026-12-06T08:30:00Z"}')
    decoded = decode(PaymentCaptured.TYPE, body)
    assert isinstance(decoded, PaymentCaptured)
    assert (decoded.method, decoded.reference_no, decoded.late) == ("va", None, False)
    newer = decoded.model_copy(update={"reference_no": "REF-1"})
    again = decode(PaymentCaptured.TYPE, newer.to_json())
    assert isinstance(again, PaymentCaptured) and again.reference_no == "REF-1"


def test_round_trip_through_json() -> None:
    sent = ProbeSent(seq=5, note="n", sent_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    decoded = decode(sent.TYPE, sent.to_json())
    assert decoded.model_dump() == sent.model_dump()


@pytest.mark.parametrize(("type_name", "body"), [
    (None, b'{"seq": 1}'),
    ("", b'{"seq": 1}'),
    ("platform.nothing_happened.v1", b'{"seq": 1}'),
    ("platform.probe_sent.v1", b"not json"),
    ("platform.probe_sent.v1", b"\xff\xfe"),
    ("platform.probe_sent.v1", b"[]"),
    ("platform.probe_sent.v1", b'{"note": "no seq"}'),
    ("platform.probe_sent.v1", b'{"seq": "abc"}'),
    ("platform.probe_sent.v1", b'{"seq": 1, "sent_at": "yesterday"}'),
])
def test_decode_failures_raise_message_decode_error(type_name: str | None, body: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        decode(type_name, body)
