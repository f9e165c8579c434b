"""Commands the payment service adds to its command line.

``reconcile FILE [--bank CLIENT_ID | --acquirer ID] [--format csv|json]`` prints a JSON report
comparing a bank's settlement list with our captured payments (the bank defaults to the first
configured one; the format to the file's extension), or with ``--acquirer`` a QRIS acquirer's list
with the QRIS payments captured through it (by ``referenceNo`` or RRN) and its refunds (by
``refundNo``). ``acquirer serve|pay|settlement`` plays a QRIS acquirer (``adapters.acquirersim``):
``pay --partner-reference-no P [--no-notify] [--times N] [--amount RUPIAH] [--late SECONDS]``,
``settlement [--out FILE] [--format csv|json]``. ``dev-bank`` creates a development bank when the partners file
does not exist (``make setup`` runs it, before any database exists) and prints where its keys are.

``bank`` is the partner-bank simulator: it tests a bank's SNAP integration against the biller::

    python -m payment_service bank keygen --out DIR [--client-id ID] [--partner-service-id DIGITS]
        [--channel-id ID]
    python -m payment_service bank [--url URL] [--bank-dir DIR] token
    python -m payment_service bank [--url URL] [--bank-dir DIR] inquiry --va DIGITS
    python -m payment_service bank [--url URL] [--bank-dir DIR] pay --va DIGITS --amount RUPIAH
        [--payment-request-id ID] [--external-id ID] [--advise]

``keygen`` writes ``DIR/bank.json`` (the bank's entry for ``PAYMENT_PARTNERS_FILE``) and
``DIR/private_key.pem`` (the bank's RSA key, mode 0600). The other commands read them from
``--bank-dir`` (default ``./banksim``); ``--config`` and ``--private-key`` name the two files
separately. ``--va`` is the digits-only VA number shown by the order API (the partner service
id's digits followed by the customer number). The base URL defaults to
``http://127.0.0.1:8082``. Each command prints the HTTP status and the JSON answer and exits 0
on a 2xx answer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
from emeterai_shared.config import ServiceSettings
from emeterai_shared.runtime import CommandLine
from emeterai_shared.uow import unit_of_work

from payment_service.adapters import acquirersim, banksim_server
from payment_service.adapters.banks import (
    BANK_FILE,
    PRIVATE_KEY_FILE,
    create_dev_bank,
    generate_bank_keys,
    new_bank_config,
    save_bank,
)
from payment_service.adapters.banksim import DEFAULT_BASE_URL, BankSimulator
from payment_service.adapters.settlement import SettlementFileError, guess_format
from payment_service.config import PaymentSettings
from payment_service.dependencies import PaymentDeps
from payment_service.service_layer.reconciliation import reconcile_acquirer_file, reconcile_file

OFFLINE_COMMANDS = frozenset({"dev-bank", "bank", "acquirer"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = sub.add_parser("reconcile", help="compare a bank's or a QRIS acquirer's settlement list with our "
                                                 "captured payments")
    reconcile.add_argument("file", type=Path, help="CSV (paymentRequestId,amount,time; an acquirer's: "
                                                   "type,referenceNo,rrn,refundNo,amount,time) or JSON list")
    which = reconcile.add_mutually_exclusive_group()
    which.add_argument("--bank", help="the bank's client id (default: the first configured bank)")
    which.add_argument("--acquirer", help="a QRIS acquirer's id: the file is its settlement list")
    reconcile.add_argument("--format", choices=["csv", "json"], help="default: from the file name")
    sub.add_parser("dev-bank", help="create a development bank unless a partners file exists")
    _bank_commands(sub.add_parser("bank", help="SNAP partner-bank simulator (keygen, token, inquiry, pay)"))
    acquirer = sub.add_parser("acquirer", help="QRIS acquirer simulator (serve; pay a QR through a served one)")
    acquirer.add_argument("--dir", type=Path, default=Path("var/dev-bank"),
                          help=f"where {acquirersim.ACQUIRER_FILE} and {acquirersim.ACQUIRER_KEY_FILE} are")
    acquirer.add_argument("--port", type=int, default=acquirersim.DEV_ACQUIRER_PORT)
    acquirer_commands = acquirer.add_subparsers(dest="acquirer_command", required=True)
    acquirer_serve = acquirer_commands.add_parser("serve", help="play the acquirer (127.0.0.1 only)")
    acquirer_serve.add_argument("--url", default=DEFAULT_BASE_URL, help="our payment service's base URL (notify)")
    acquirer_pay = acquirer_commands.add_parser("pay", help="pay a QR at the served acquirer")
    acquirer_pay.add_argument("--partner-reference-no", required=True)
    acquirer_pay.add_argument("--no-notify", action="store_true", help="pay without notifying us")
    acquirer_pay.add_argument("--times", type=int, default=1, help="notify this many times")
    acquirer_pay.add_argument("--amount", type=int, help="report this amount instead of the QR's")
    acquirer_pay.add_argument("--late", type=float, default=0.0, metavar="SECONDS",
                              help="pay now, notify this many seconds later")
    acquirer_settlement = acquirer_commands.add_parser(
        "settlement", help="the served acquirer's settlement list (paid QRs and refunds), for reconcile --acquirer")
    acquirer_settlement.add_argument("--out", type=Path, help="write it here (default: print it)")
    acquirer_settlement.add_argument("--format", choices=["csv", "json"], help="default: from --out's name, else json")


def _bank_commands(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_BASE_URL, help="biller base URL")
    parser.add_argument("--bank-dir", type=Path, default=Path("banksim"))
    parser.add_argument("--config", type=Path, help=f"bank entry JSON (default DIR/{BANK_FILE})")
    parser.add_argument("--private-key", type=Path, help=f"default DIR/{PRIVATE_KEY_FILE}")
    commands = parser.add_subparsers(dest="bank_command", required=True)
    keygen = commands.add_parser("keygen", help="create a bank: keys, id, secret")
    keygen.add_argument("--out", type=Path, required=True)
    keygen.add_argument("--client-id")
    keygen.add_argument("--partner-service-id", default="77001")
    keygen.add_argument("--channel-id", default="95221")
    commands.add_parser("token", help="get an access token")
    inquiry = commands.add_parser("inquiry", help="ask for the bill behind a VA")
    inquiry.add_argument("--va", required=True)
    pay = commands.add_parser("pay", help="flag a payment to a VA")
    pay.add_argument("--va", required=True)
    pay.add_argument("--amount", type=int, required=True, help="whole rupiah")
    pay.add_argument("--payment-request-id")
    pay.add_argument("--external-id")
    pay.add_argument("--advise", action="store_true", help='resend: flagAdvise "Y"')
    serve = commands.add_parser("serve", help="pay virtual accounts on request over HTTP (the web app's "
                                              "development pay control; 127.0.0.1 only)")
    serve.add_argument("--port", type=int, default=8089)


async def run_command(deps: PaymentDeps, args: argparse.Namespace) -> int:
    """``reconcile`` (the one command that needs the database)."""
    settings = deps.settings
    if getattr(args, "acquirer", None):
        acquirer = deps.acquirers.get(args.acquirer)
        if acquirer is None:
            print(f"reconcile: no acquirer {args.acquirer!r} configured in {settings.partners_file}", file=sys.stderr)
            return 2
        try:
            async with unit_of_work(deps.pool) as uow:
                report = await reconcile_acquirer_file(uow, acquirer.acquirer_id, args.file,
                                                       args.format or guess_format(args.file))
        except (OSError, SettlementFileError) as exc:
            print(f"reconcile: {args.file}: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2))
        return 0
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
    """``dev-bank`` and ``bank``: run without database or broker."""
    assert isinstance(settings, PaymentSettings)
    if args.command == "bank":
        return await _bank(args)
    if args.command == "acquirer":
        return await _acquirer(args)
    code = _dev_bank(Path(settings.partners_file))
    if acquirersim.add_dev_acquirer(Path(settings.partners_file)):
        print(f"payment: development QRIS acquirer added to {settings.partners_file} "
              f"(played by: python -m payment_service acquirer serve)")
    return code


async def _acquirer(args: argparse.Namespace) -> int:
    if args.acquirer_command == "serve":
        return await acquirersim.serve(args.dir, args.url, args.port)
    if args.acquirer_command == "settlement":
        return await _acquirer_settlement(args)
    body: dict[str, Any] = {"partnerReferenceNo": args.partner_reference_no, "notify": not args.no_notify,
                            "times": args.times}
    if args.amount is not None:
        body["amount"] = args.amount
    if args.late:
        body["late_s"] = args.late
    try:
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{args.port}/sim/pay", json=body) as resp:
            print(f"HTTP {resp.status}\n{await resp.text()}")
            return 0 if resp.status == 200 else 1
    except aiohttp.ClientError as exc:
        print(f"acquirer: {exc}", file=sys.stderr)
        return 1


async def _acquirer_settlement(args: argparse.Namespace) -> int:
    fmt = args.format or (guess_format(args.out) if args.out else "json")
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{args.port}/sim/settlement", params={"format": fmt}) as resp:
            text = await resp.text()
            if resp.status != 200:
                print(f"acquirer: HTTP {resp.status}\n{text}", file=sys.stderr)
                return 1
    except aiohttp.ClientError as exc:
        print(f"acquirer: {exc}", file=sys.stderr)
        return 1
    if args.out is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        args.out.write_text(text)
        print(f"settlement list written to {args.out} (python -m payment_service reconcile {args.out} "
              f"--acquirer ID)")
    return 0


def _dev_bank(partners_file: Path) -> int:
    created = create_dev_bank(partners_file)
    keys = partners_file.parent
    if created:
        print(f"payment: development bank created: partners file {partners_file}, bank entry and private key "
              f"in {keys / BANK_FILE} and {keys / PRIVATE_KEY_FILE} "
              f"(try: python -m payment_service bank --bank-dir {keys} token)")
    elif (keys / PRIVATE_KEY_FILE).exists():
        print(f"payment: partners file {partners_file} exists; development bank keys in {keys}")
    else:
        print(f"payment: partners file {partners_file} exists; no development bank created")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    private_pem, public_pem = generate_bank_keys()
    config = new_bank_config(
        public_pem,
        client_id=args.client_id,
        partner_service_id=args.partner_service_id,
        channel_id=args.channel_id,
    )
    save_bank(args.out, config, private_pem)
    print(f"bank {config['client_id']} written to {args.out}/{{{BANK_FILE},{PRIVATE_KEY_FILE}}}")
    return 0


def _customer_no(bank: BankSimulator, va: str) -> str:
    if not va.startswith(bank.partner_service_id) or len(va) == len(bank.partner_service_id):
        raise SystemExit(f"--va must start with partner service id {bank.partner_service_id}")
    return va[len(bank.partner_service_id) :]


async def _call(args: argparse.Namespace) -> int:
    config = json.loads((args.config or args.bank_dir / BANK_FILE).read_text())
    private_pem = (args.private_key or args.bank_dir / PRIVATE_KEY_FILE).read_bytes()
    async with BankSimulator.from_config(args.url, config, private_pem) as bank:
        result: tuple[int, dict[str, Any]]
        if args.bank_command == "token":
            result = await bank.get_token()
        elif args.bank_command == "inquiry":
            result = await bank.inquiry(_customer_no(bank, args.va))
        else:
            result = await bank.pay(
                _customer_no(bank, args.va),
                args.amount,
                args.payment_request_id,
                args.external_id,
                "Y" if args.advise else "N",
            )
    status, body = result
    print(f"HTTP {status}\n{json.dumps(body, indent=2, ensure_ascii=False)}")
    return 0 if 200 <= status < 300 else 1


async def _bank(args: argparse.Namespace) -> int:
    if args.bank_command == "keygen":
        return _keygen(args)
    if args.bank_command == "serve":
        return await banksim_server.serve(args.url, args.bank_dir, args.port)
    try:
        return await _call(args)
    except (OSError, RuntimeError, ValueError, aiohttp.ClientError) as exc:
        print(f"bank: {exc}", file=sys.stderr)
        return 1


COMMANDS = CommandLine(add_commands, run_command, OFFLINE_COMMANDS, run_offline)
