"""Commands the order service adds to its command line: partner webhook deliveries.

``webhooks list [--partner P] [--status S] [--limit N]`` prints deliveries, newest first, one
JSON object a line; ``webhooks attempts --id N`` prints the delivery log of one delivery (every
attempt with its HTTP status or error and duration); ``webhooks resend --id N [--id M ...]``
makes deliveries due now whatever their status (a FAILED one gets one more attempt, and is
FAILED again if that fails too, its 3 days being over) and prints which ids were found.
"""

from __future__ import annotations

import argparse
import json

from emeterai_shared.runtime import CommandLine
from emeterai_shared.uow import unit_of_work

from order_service.dependencies import OrderDeps
from order_service.domain.delivery import DeliveryStatus
from order_service.service_layer import partner_feed


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = sub.add_parser("webhooks", help="partner webhook deliveries: list, attempts, resend")
    actions = hooks.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="deliveries, newest first")
    listing.add_argument("--partner")
    listing.add_argument("--status", type=DeliveryStatus, choices=list(DeliveryStatus))
    listing.add_argument("--limit", type=int, default=100)
    log = actions.add_parser("attempts", help="every attempt of one delivery")
    log.add_argument("--id", type=int, required=True)
    resend = actions.add_parser("resend", help="make deliveries due now, even FAILED ones")
    resend.add_argument("--id", type=int, action="append", required=True)


def _print(row: dict[str, object]) -> None:
    print(json.dumps(row, default=str))


async def run_command(deps: OrderDeps, args: argparse.Namespace) -> int:
    async with unit_of_work(deps.pool) as uow:
        if args.action == "list":
            for row in await partner_feed.deliveries(uow, partner_id=args.partner, status=args.status,
                                                     limit=args.limit):
                _print(row)
            return 0
        if args.action == "attempts":
            for row in await partner_feed.attempts(uow, args.id):
                _print(row)
            return 0
        resent = await partner_feed.resend(uow, args.id)
    unknown = sorted(set(args.id) - set(resent))
    _print({"resent": resent, "unknown": unknown})
    return 1 if unknown else 0


COMMANDS = CommandLine(add_commands, run_command)
