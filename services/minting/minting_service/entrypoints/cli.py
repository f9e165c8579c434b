"""Commands the minting service adds to its command line; each prints one JSON object.

``stock add --count N [--prefix P]``   generate N new STOCK serials
``stock show``                         what is left to issue (by prefix) and what became of the rest
``stock ensure --min N [--prefix P]``  top the stock up to at least N (``make setup`` runs it)
``void SN [SN ...] [--reason R]``      void STOCK serials (leaked, misprinted, ...); issued ones are refused:
                                       they are voided through their order (see ``stock.void_serials``)
``waiting list``                       paid orders waiting for stock, oldest first
``waiting refund (--order ID ... | --all) [--reason R]``
                                       refund waiting orders now instead of at their deadline
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime

import asyncpg

from minting_service.adapters.repository import MintingRepository
from minting_service.domain import serial
from minting_service.domain.stamp import SerialStatus
from minting_service.service_layer.issuance import refund_waiting
from minting_service.service_layer.stock import add_stock, ensure_stock, stock_report, void_serials


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _prefix(text: str) -> str:
    if not serial.is_valid_prefix(text):
        raise argparse.ArgumentTypeError(f"0-{serial.MAX_PREFIX} characters of 0-9 and A-Z")
    return text


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stock = sub.add_parser("stock", help="pre-generated serials: add, show, ensure")
    actions = stock.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="generate new STOCK serials")
    add.add_argument("--count", type=_count, required=True)
    add.add_argument("--prefix", type=_prefix, default="")
    actions.add_parser("show", help="print what is left (JSON)")
    ensure = actions.add_parser("ensure", help="top the stock up to at least --min serials")
    ensure.add_argument("--min", dest="minimum", type=_count, required=True)
    ensure.add_argument("--prefix", type=_prefix, default="")
    void = sub.add_parser("void", help="void STOCK serials (issued ones are voided through their order)")
    void.add_argument("sn", nargs="+")
    void.add_argument("--reason", default="voided by an operator")
    waiting = sub.add_parser("waiting", help="paid orders waiting for stock: list, refund now")
    waits = waiting.add_subparsers(dest="action", required=True)
    waits.add_parser("list", help="print the waiting orders, oldest first (JSON)")
    refund = waits.add_parser("refund", help="refund waiting orders now (minting.failed: the order refunds)")
    which = refund.add_mutually_exclusive_group(required=True)
    which.add_argument("--order", type=uuid.UUID, action="append")
    which.add_argument("--all", action="store_true")
    refund.add_argument("--reason", default="refunded by an operator while waiting for stock")


async def run_command(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    async with pool.acquire() as conn:
        if args.command == "void":
            result = await void_serials(conn, [sn.upper() for sn in args.sn], args.reason, datetime.now(UTC),
                                        (SerialStatus.STOCK,))
        elif args.command == "waiting" and args.action == "list":
            async with conn.transaction():
                rows = await MintingRepository(conn).waiting_orders(None)
            result = {"waiting": [{k: str(v) for k, v in dict(r).items()} for r in rows]}
        elif args.command == "waiting":
            refunded = await refund_waiting(conn, None if args.all else args.order, args.reason, datetime.now(UTC))
            result = {"refunded": [str(o) for o in refunded]}
        elif args.action == "show":
            result = await stock_report(conn)
        else:
            added = (await add_stock(conn, args.count, args.prefix) if args.action == "add"
                     else await ensure_stock(conn, args.minimum, args.prefix))
            result = {"added": added, **await stock_report(conn)}
    print(json.dumps(result))
    return 0
