"""Settlement lists: CSV or a JSON list of objects.

A bank's (virtual accounts): ``paymentRequestId,amount,time``. A QRIS acquirer's
(``read_acquirer_settlement``): ``referenceNo`` (the acquirer's reference of the QR payment) and/or
``rrn``, ``amount``, ``time``, and optionally ``type``: ``payment`` (the default) or ``refund``,
a refund naming its ``refundNo``; other columns (``partnerReferenceNo``, ``partnerRefundNo``) are
ignored. ``amount`` is whole rupiah, written ``12500`` or ``12500.00``; ``time`` is ISO-8601, read
as Asia/Jakarta time when it has no offset.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from payment_service.domain.model import JAKARTA
from payment_service.domain.reconciliation import Settled

Format = Literal["csv", "json"]
FIELDS = ("paymentRequestId", "amount", "time")
ACQUIRER_FIELDS = ("amount", "time")
"""Besides these, an acquirer's CSV names ``referenceNo`` or ``rrn`` (and ``type``, ``refundNo``)."""


class SettlementFileError(ValueError):
    """The file is not a settlement list; the message names the first bad line."""


def guess_format(path: Path) -> Format:
    return "json" if path.suffix.lower() == ".json" else "csv"


def _records(path: Path, fmt: Format, required: tuple[str, ...]) -> list[Any]:
    text = path.read_text(encoding="utf-8-sig")
    if fmt == "json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettlementFileError(f"not JSON: {exc}") from None
        if not isinstance(records, list):
            raise SettlementFileError("a JSON settlement list must be a list of objects")
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or not set(required) <= set(reader.fieldnames):
            raise SettlementFileError(f"the CSV header must name {', '.join(required)}")
        records = list(reader)
    if not records:
        raise SettlementFileError("the settlement list is empty")
    return records


def read_settlement(path: Path, fmt: Format) -> list[Settled]:
    return [_line(i, record) for i, record in enumerate(_records(path, fmt, FIELDS), start=1)]


def _amount_time(record: Any) -> tuple[int, datetime]:
    if not isinstance(record, dict):
        raise ValueError("not an object")
    amount = Decimal(str(record["amount"]))
    if amount != amount.to_integral_value() or amount < 0:
        raise ValueError(f"amount {record['amount']!r} is not whole rupiah")
    when = datetime.fromisoformat(str(record["time"]))
    return int(amount), when if when.tzinfo else when.replace(tzinfo=JAKARTA)


def _line(number: int, record: Any) -> Settled:
    try:
        amount, when = _amount_time(record)
        request_id = str(record["paymentRequestId"]).strip()
        if not request_id:
            raise ValueError("empty paymentRequestId")
    except (KeyError, ValueError, InvalidOperation) as exc:
        raise SettlementFileError(f"line {number}: {exc!r}") from None
    return Settled(request_id, amount, when)


def _text(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    return "" if value is None else str(value).strip()


def read_acquirer_settlement(path: Path, fmt: Format) -> tuple[list[Settled], list[Settled]]:
    """A QRIS acquirer's settlement list: (its payments, keyed by ``referenceNo``, else the RRN,
    with the RRN as alias; its refunds, keyed by ``refundNo``)."""
    payments, refunds = [], []
    for number, record in enumerate(_records(path, fmt, ACQUIRER_FIELDS), start=1):
        try:
            amount, when = _amount_time(record)
            kind = _text(record, "type") or "payment"
            if kind == "refund":
                refund_no = _text(record, "refundNo")
                if not refund_no:
                    raise ValueError("a refund line needs its refundNo")
                refunds.append(Settled(refund_no, amount, when))
            elif kind == "payment":
                reference_no, rrn = _text(record, "referenceNo"), _text(record, "rrn")
                if not reference_no and not rrn:
                    raise ValueError("a payment line needs its referenceNo or rrn")
                payments.append(Settled(reference_no or rrn, amount, when, rrn or None))
            else:
                raise ValueError(f"type {kind!r} is neither payment nor refund")
        except (KeyError, ValueError, InvalidOperation) as exc:
            raise SettlementFileError(f"line {number}: {exc!r}") from None
    return payments, refunds
