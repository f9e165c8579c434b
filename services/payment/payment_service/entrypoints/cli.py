"""Commands the payment service adds to its command line.

``reconcile FILE [--bank CLIENT_ID] [--format csv|json]`` prints a JSON report comparing a bank's
settlement list with our captured payments (the bank defaults to the first configured one; the
format to the file's extension). ``dev-bank`` creates a development bank when the partners file
does not exist (``make setup`` runs it, before any database exists) and prints where its keys are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from emeterai_shared.config import ServiceSettings
from emeterai_shared.uow import unit_of_work

from payment_service.adapters.banks import BANK_FILE, PRIVATE_KEY_FILE, create_dev_bank
from payment_service.adapters.settlement import SettlementFileError, guess_format
from payment_service.config import PaymentSettings
from payment_service.service_layer.reconciliation import reconcile_file

if TYPE_CHECKING:
    from payment_service.bootstrap import PaymentDeps

OFFLINE_COMMANDS = frozenset({"dev-bank"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = sub.add_parser("reconcile", help="compare a bank settlement list with our captured payments")
    reconcile.add_argument("file", type=Path, help="CSV (paymentRequestId,amount,time) or JSON list")
    reconcile.add_argument("--bank", help="the bank's client id (default: the first configured bank)")
    reconcile.add_argument("--format", choices=["csv", "json"], help="default: from the file name")
    sub.add_parser("dev-bank", help="create a development bank unless a partners file exists")


async def run_command(deps: PaymentDeps, args: argparse.Namespace) -> int:
    """``reconcile`` (the one command that needs the database)."""
    settings = deps.settings
    bank = deps.banks.for_order(args.bank)
    if bank is None:
        what = f"bank {args.bank!r}" if args.bank else "bank"
        print(f"reconcile: no {what} configured in {settings.partners_file}", file=sys.stderr)
        return 2
    try:
        async with unit_of_work(deps.pool) as uow:
            report = await reconcile_file(uow, bank.client_id, args.file, args.format or guess_format(args.file))
    except (OSError, SettlementFileError) as exc:
        print(f"reconcile: {args.file}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


async def run_offline(settings: ServiceSettings, args: argparse.Namespace) -> int:
    """``dev-bank``: run without database or broker."""
    assert isinstance(settings, PaymentSettings) and args.command == "dev-bank"
    return _dev_bank(Path(settings.partners_file))


def _dev_bank(partners_file: Path) -> int:
    created = create_dev_bank(partners_file)
    keys = partners_file.parent
    if created:
        print(f"payment: development bank created: partners file {partners_file}, bank entry and private key "
              f"in {keys / BANK_FILE} and {keys / PRIVATE_KEY_FILE} "
              f"(try: python -m payment_service.entrypoints.banksim_cli --bank-dir {keys} token)")
    elif (keys / PRIVATE_KEY_FILE).exists():
        print(f"payment: partners file {partners_file} exists; development bank keys in {keys}")
    else:
        print(f"payment: partners file {partners_file} exists; no development bank created")
    return 0
