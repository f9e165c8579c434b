"""The service's own commands: ``reconcile`` and ``dev-bank``, run as real processes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from emeterai_testkit.fixtures import REPO_ROOT, settings_env
from payment_service.adapters.banks import BankRegistry, load_bank
from payment_service.adapters.snap import PAYMENT_PATH
from payment_service.adapters.snap.signatures import (
    format_snap_timestamp,
    sign_access_token,
    verify_access_token_signature,
)
from payment_service.config import PaymentSettings
from payment_service.entrypoints.cli import COMMANDS

if TYPE_CHECKING:
    from conftest import Payment


async def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "payment_service", *args, env=env, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def capture(payment: Payment, prid: str, trx_time: datetime) -> None:
    bill = await payment.place_order(12_500, bank="bank-r")
    async with payment.bank("bank-r") as bank:
        await bank.get_token()
        assert bank.access_token is not None
        body = bank.payment_body(str(bill["virtual_account_no"])[5:], 12_500, payment_request_id=prid)
        body["trxDateTime"] = format_snap_timestamp(trx_time)
        status, _ = await bank.send(bank.build_signed_request(PAYMENT_PATH, body, access_token=bank.access_token))
        assert status == 200


async def test_reconcile_report(payment: Payment, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for prid, when in (("rc-1", now), ("rc-2", now), ("rc-3", now), ("rc-old", now - timedelta(days=2))):
        await capture(payment, prid, when)
    lines = [("rc-1", "12500", now - timedelta(minutes=30)), ("rc-2", "13000.00", now),
             ("rc-9", "12500", now + timedelta(minutes=30))]
    csv_file = tmp_path / "settlement.csv"
    csv_file.write_text("paymentRequestId,amount,time\n" + "".join(f"{p},{a},{t.isoformat()}\n" for p, a, t in lines))

    code, out, err = await run(settings_env(payment.settings), "reconcile", str(csv_file), "--bank", "bank-r")
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    assert report["bank"] == "bank-r"
    assert report["matched"] == ["rc-1"]
    assert report["amount_mismatches"] == [{"paymentRequestId": "rc-2", "ours": 12_500, "bank": 13_000}]
    assert report["missing_on_our_side"] == ["rc-9"]
    assert report["missing_on_bank_side"] == ["rc-3"]  # rc-old lies outside the file's time window
    assert report["counts"] == {"lines": 3, "matched": 1, "missing_on_our_side": 1, "missing_on_bank_side": 1,
                                "amount_mismatches": 1, "duplicates_in_file": 0}

    json_file = tmp_path / "settlement.json"
    json_file.write_text(json.dumps([{"paymentRequestId": p, "amount": int(float(a)), "time": t.isoformat()}
                                     for p, a, t in lines]))
    assert COMMANDS.run is not None
    args = argparse.Namespace(command="reconcile", file=json_file, bank="bank-r", format=None)
    assert await COMMANDS.run(payment.deps, args) == 0
    assert {k: v for k, v in json.loads(capsys.readouterr().out).items() if k != "file"} == \
        {k: v for k, v in report.items() if k != "file"}

    bad = tmp_path / "bad.csv"
    bad.write_text("paymentRequestId,amount,time\nrc-1,12.5.0,yesterday\n")
    assert await COMMANDS.run(payment.deps,
                                     argparse.Namespace(command="reconcile", file=bad, bank="bank-r",
                                                        format=None)) == 2
    assert "line 1" in capsys.readouterr().err


async def test_dev_bank_is_created_once_without_a_database(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    partners_file = tmp_path / "dev-bank" / "banks.json"
    env = {**os.environ, "PAYMENT_PARTNERS_FILE": str(partners_file),
           "PAYMENT_PG_BASE_URL": "postgresql://nobody@127.0.0.1:1"}  # unreachable: the command needs none
    code, out, err = await run(env, "dev-bank")
    assert code == 0, err
    assert str(partners_file.parent / "private_key.pem") in out
    content = partners_file.read_text()
    [entry] = json.loads(content)["banks"]
    assert set(entry) == {"client_id", "client_secret", "public_key_pem", "partner_service_id", "channel_id",
                          "name"}

    assert COMMANDS.run_offline is not None and "dev-bank" in COMMANDS.offline
    settings = PaymentSettings(partners_file=str(partners_file))
    assert await COMMANDS.run_offline(settings, argparse.Namespace(command="dev-bank")) == 0
    assert "exists" in capsys.readouterr().out and partners_file.read_text() == content

    config, private_pem = load_bank(partners_file.parent)
    assert config == entry
    bank = BankRegistry.load(partners_file).for_order(None)
    assert bank is not None and bank.client_id == entry["client_id"]
    signature = sign_access_token(private_pem, bank.client_id, "2024-09-04T10:00:00+07:00")
    assert verify_access_token_signature(bank.public_key, bank.client_id, "2024-09-04T10:00:00+07:00", signature)
