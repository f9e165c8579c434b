"""``python -m bench.minting``: serials issued per second when many orders are paid at once.

Measured in one run, against the real PostgreSQL and RabbitMQ:

1. the raw ceiling: single-row commits/s through asyncpg over 8 connections;
2. stock generation: ``add_stock`` serials/s (what ``stock add`` and ``stock ensure`` cost);
3. issuance: ``--orders`` ``order.paid.v1`` messages wait in the worker's queue (paid at once),
   then an in-process worker (``running``, no relay) issues them; timed from the worker's start
   to the last issuance. Transactions per order = the database's ``xact_commit`` after minus
   before, less our own progress polls, divided by the orders. It counts every transaction the
   worker runs (batch commits, and the reset asyncpg runs when a connection returns to its
   pool), read once every backend has exited and flushed its counters.

Writes ``bench/results/minting.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import uvloop
from emeterai_shared.contracts.events import OrderPaid, SerialsIssued
from emeterai_shared.db import connect_with_retry
from emeterai_shared.messaging import EVENTS, Publisher, connect
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import (
    reset_service,
    running,
    settings_for,
)
from minting_service.bootstrap import SERVICE
from minting_service.config import MintingSettings
from minting_service.service_layer.stock import add_stock

from bench.common import benchmark_broker, fresh_vhost, machine_info, rate_record
from bench.messaging.raw import Rate, commit_ceiling

VHOST = "emeterai_bench_minting"
DATABASE = "emeterai_bench_minting"
RESULTS = Path(__file__).resolve().parents[1] / "results" / "minting.json"
PUBLISH_IN_FLIGHT = 500
POLL_INTERVAL_S = 0.02
REPORTED_SETTINGS = ("prefetch", "consumer_concurrency", "consumer_batch_max", "db_pool_max")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.minting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000, help="orders paid at once")
    parser.add_argument("--quantity", type=int, default=2, help="serials per order")
    parser.add_argument("--stock", type=int, default=100_000, help="serials generated before the run")
    parser.add_argument("--commits", type=int, default=4_000, help="raw single-row commits")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a minting setting of the worker (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.stock < args.orders * args.quantity:
        parser.error("--stock must cover --orders x --quantity")
    return args


async def settled_commits(admin: asyncpg.Connection) -> int:
    """``xact_commit`` of the bench database once no backend is connected to it and the counter
    stands still (a backend flushes its counters as it exits)."""
    while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", DATABASE):
        await asyncio.sleep(0.05)
    query = "SELECT xact_commit FROM pg_stat_database WHERE datname = $1"
    last, current = -1, int(await admin.fetchval(query, DATABASE))
    while current != last:
        await asyncio.sleep(0.2)
        last, current = current, int(await admin.fetchval(query, DATABASE))
    return current


async def pay_orders(settings: MintingSettings, orders: int, quantity: int) -> None:
    """Publish the paid orders as the order relay would: persistent, confirmed, many in flight."""
    connection = await connect(settings.amqp_url, name="bench-minting-orders")
    publisher = Publisher(connection, app_id="order", timeout=30)
    try:
        for start in range(0, orders, PUBLISH_IN_FLIGHT):
            paid = [OrderPaid(order_id=uuid4(), account_id=uuid4(), quantity=quantity, amount=quantity * 12_500,
                              paid_at=datetime.now(UTC)) for _ in range(min(PUBLISH_IN_FLIGHT, orders - start))]
            await asyncio.gather(*(publisher.publish(
                exchange=EVENTS, routing_key=p.TYPE, body=p.to_json(), message_id=str(uuid4()),
                message_type=p.TYPE, correlation_id=str(p.order_id)) for p in paid))
    finally:
        await publisher.close()
        await connection.close()


async def issue(settings: MintingSettings, orders: int) -> tuple[Rate, int]:
    """Run a worker until every order is issued; returns the rate and our progress polls."""
    conn = await connect_with_retry(settings.database_url)
    polls = 0
    try:
        started = time.perf_counter()
        async with running(SERVICE, settings, relay=False):
            while True:
                polls += 1
                if await conn.fetchval("SELECT count(*) FROM issuances") >= orders:
                    break
                await asyncio.sleep(POLL_INTERVAL_S)
            elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return Rate(orders, elapsed), polls


async def check(settings: MintingSettings, orders: int, quantity: int) -> dict[str, int]:
    conn = await connect_with_retry(settings.database_url)
    try:
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM issuances WHERE status = 'ISSUED') AS issued_orders,
                      (SELECT count(*) FROM serials WHERE order_id IS NOT NULL) AS serials,
                      (SELECT count(*) FROM outbox WHERE message_type = $1) AS announcements,
                      (SELECT count(*) FROM (SELECT order_id FROM serials WHERE order_id IS NOT NULL
                                             GROUP BY order_id HAVING count(*) <> $2) o) AS wrong_orders""",
            SerialsIssued.TYPE, quantity,
        )
    finally:
        await conn.close()
    result = dict(row)
    expected = {"issued_orders": orders, "serials": orders * quantity, "announcements": orders, "wrong_orders": 0}
    if result != expected:
        raise SystemExit(f"issuance is wrong: {result} != {expected}")
    return result


async def run(args: argparse.Namespace, secrets_dir: str) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    overrides = dict(item.split("=", 1) for item in args.overrides)
    settings = settings_for(MintingSettings, database_name=DATABASE, amqp_url=fresh_vhost(VHOST),
                            secrets_dir=secrets_dir,
                            log_level="WARNING", **overrides)
    assert isinstance(settings, MintingSettings)
    await reset_service(SERVICE, settings)
    commits = await commit_ceiling(settings.database_url, total=args.commits)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        started = time.perf_counter()
        async with unit_of_work(pool) as uow:
            await add_stock(uow, args.stock)
        stock = Rate(args.stock, time.perf_counter() - started)
    finally:
        await pool.close()
    await pay_orders(settings, args.orders, args.quantity)

    admin = await connect_with_retry(settings.database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        before = await settled_commits(admin)
        orders, polls = await issue(settings, args.orders)
        transactions = await settled_commits(admin) - before - polls
    finally:
        await admin.close()
    serials = Rate(orders.count * args.quantity, orders.seconds)
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "orders": args.orders,
        "serials_per_order": args.quantity,
        "raw_commits": {**rate_record(commits), "connections": 8},
        "stock_generation": rate_record(stock),
        "issuance": {
            "orders": rate_record(orders),
            "serials": rate_record(serials),
            "transactions": transactions,
            "transactions_per_order": round(transactions / args.orders, 3),
            "ratio_to_raw_commit_rate": round(orders.per_s / commits.per_s, 2),
            "checked": await check(settings, args.orders, args.quantity),
        },
        "settings": {name: getattr(settings, name) for name in REPORTED_SETTINGS},
        "machine": await machine_info(settings, load_at_start),
    }


def print_table(report: dict[str, Any]) -> None:
    issuance = report["issuance"]
    rows = [("raw commits (asyncpg, 1 INSERT/tx, 8 conns)", report["raw_commits"]),
            ("stock generation (serials)", report["stock_generation"]),
            (f"issuance: orders ({report['serials_per_order']} serials each)", issuance["orders"]),
            ("issuance: serials", issuance["serials"])]
    print(f"\n{'measure':<48}{'count':>9}{'seconds':>9}{'per s':>10}")
    for name, rate in rows:
        print(f"{name:<48}{rate['count']:>9}{rate['seconds']:>9.2f}{rate['per_s']:>10.0f}")
    print(f"\ntransactions per order: {issuance['transactions_per_order']} "
          f"({issuance['transactions']} for {report['orders']} orders); "
          f"orders/s ÷ raw commits/s: {issuance['ratio_to_raw_commit_rate']}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    machine = report["machine"]
    print(f"machine: {machine['nproc']} cpu, Python {machine['python']}, PostgreSQL {machine['postgresql']}"
          f" (synchronous_commit={machine['postgresql_synchronous_commit']})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with benchmark_broker(VHOST), tempfile.TemporaryDirectory() as secrets_dir:
        report = uvloop.run(run(args, secrets_dir))
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
