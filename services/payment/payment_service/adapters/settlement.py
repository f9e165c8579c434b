"""Bank settlement lists: CSV (header ``paymentRequestId,amount,time``) or a JSON list of objects.

``amount`` is whole rupiah, written ``12500`` or ``12500.00``; ``time`` is ISO-8601, read as
Asia/Jakarta time when it has no offset.
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


class SettlementFileError(ValueError):
    """The file is not a settlement list; the message names the first bad line."""


def guess_format(path: Path) -> Format:
    return "json" if path.suffix.lower() == ".json" else "csv"


def read_settlement(path: Path, fmt: Format) -> list[Settled]:
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
        if reader.fieldnames is None or not set(FIELDS) <= set(reader.fieldnames):
            raise SettlementFileError(f"the CSV header must name {', '.join(FIELDS)}")
        records = list(reader)
    lines = [_line(i, record) for i, record in enumerate(records, start=1)]
    if not lines:
        raise SettlementFileError("the settlement list is empty")
    return lines


def _line(number: int, record: Any) -> Settled:
    try:
        if not isinstance(record, dict):
            raise ValueError("not an object")
        amount = Decimal(str(record["amount"]))
        if amount != amount.to_integral_value() or amount < 0:
            raise ValueError(f"amount {record['amount']!r} is not whole rupiah")
        when = datetime.fromisoformat(str(record["time"]))
        request_id = str(record["paymentRequestId"]).strip()
        if not request_id:
            raise ValueError("empty paymentRequestId")
    except (KeyError, ValueError, InvalidOperation) as exc:
        raise SettlementFileError(f"line {number}: {exc!r}") from None
    return Settled(request_id, int(amount), when if when.tzinfo else when.replace(tzinfo=JAKARTA))
