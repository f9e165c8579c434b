"""Bank simulator command line: test a partner bank's SNAP integration against the biller.

    python -m payment_service.entrypoints.banksim_cli keygen --out DIR [--client-id ID]
        [--partner-service-id DIGITS] [--channel-id ID]
    python -m payment_service.entrypoints.banksim_cli [--url URL] [--bank-dir DIR] token
    python -m payment_service.entrypoints.banksim_cli [--url URL] [--bank-dir DIR] inquiry --va DIGITS
    python -m payment_service.entrypoints.banksim_cli [--url URL] [--bank-dir DIR] pay --va DIGITS
        --amount RUPIAH [--payment-request-id ID] [--external-id ID] [--advise]

``keygen`` writes ``DIR/bank.json`` (the bank's entry for ``PAYMENT_PARTNERS_FILE``) and
``DIR/private_key.pem`` (the bank's RSA key, mode 0600). The other commands read them from
``--bank-dir`` (default ``./banksim``); ``--config`` and ``--private-key`` name the two files
separately. ``--va`` is the digits-only VA number shown by the order API (the partner service
id's digits followed by the customer number). The base URL defaults to
``http://127.0.0.1:8082``. Each command prints the HTTP status and the JSON answer and exits 0
on a 2xx answer, 1 otherwise.
"""

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from payment_service.adapters.banks import (
    BANK_FILE,
    PRIVATE_KEY_FILE,
    generate_bank_keys,
    new_bank_config,
    save_bank,
)
from payment_service.adapters.banksim import DEFAULT_BASE_URL, BankSimulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banksim", description="SNAP partner-bank simulator.")
    parser.add_argument("--url", default=DEFAULT_BASE_URL, help="biller base URL")
    parser.add_argument("--bank-dir", type=Path, default=Path("banksim"))
    parser.add_argument("--config", type=Path, help=f"bank entry JSON (default DIR/{BANK_FILE})")
    parser.add_argument("--private-key", type=Path, help=f"default DIR/{PRIVATE_KEY_FILE}")
    commands = parser.add_subparsers(dest="command", required=True)
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
    return parser


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
        if args.command == "token":
            result = await bank.get_token()
        elif args.command == "inquiry":
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        return _keygen(args)
    try:
        return asyncio.run(_call(args))
    except (OSError, RuntimeError, ValueError, aiohttp.ClientError) as exc:
        print(f"banksim: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
