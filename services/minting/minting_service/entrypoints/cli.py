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
from typing import Any

from emeterai_shared.runtime import CommandLine
from emeterai_shared.uow import UnitOfWork, unit_of_work

from minting_service.dependencies import MintingDeps
from minting_service.domain import serial
from minting_service.domain.stamp import SerialStatus
from minting_service.service_layer.issuance import refund_waiting, waiting_orders
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


async def run_command(deps: MintingDeps, args: argparse.Namespace) -> int:
    """One command, one transaction; prints its result as one JSON object."""
    async with unit_of_work(deps.pool) as uow:
        result = await _run(uow, args, datetime.now(UTC))
    print(json.dumps(result))
    return 0


async def _run(uow: UnitOfWork, args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    if args.command == "void":
        return await void_serials(uow, [sn.upper() for sn in args.sn], args.reason, now, (SerialStatus.STOCK,))
    if args.command == "waiting" and args.action == "list":
        return {"waiting": [{k: str(v) for k, v in row.items()} for row in await waiting_orders(uow)]}
    if args.command == "waiting":
        refunded = await refund_waiting(uow, None if args.all else args.order, args.reason, now)
        return {"refunded": [str(o) for o in refunded]}
    if args.action == "show":
        return await stock_report(uow)
    added = (await add_stock(uow, args.count, args.prefix) if args.action == "add"
             else await ensure_stock(uow, args.minimum, args.prefix))
    return {"added": added, **await stock_report(uow)}


COMMANDS = CommandLine(add_commands, run_command)
