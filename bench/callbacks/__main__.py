"""``python -m bench.callbacks``: SNAP payment callbacks/s beside a trivial aiohttp endpoint.

In one run, with one load generator (``bench.callbacks.load``, one aiohttp session per target,
``--concurrency`` requests in flight):

1. a fresh payment database (``emeterai_bench_payment``) and vhost, a generated bank in a temp
   partners file, N + warm-up open bills issued by the service's own ``issue_bill``;
2. one payment ``api`` and one ``relay`` process (``python -m payment_service``, settings through
   the environment) and one trivial endpoint process (``bench.callbacks.trivial``);
3. one access token, then every payment callback built and signed BEFORE any timing;
4. the trivial endpoint, the payment API, and the trivial endpoint again, each after a warm-up:
   timed from the first request sent to the last answer received. Every payment answer must be
   ``2002500``; afterwards the database must hold exactly one capture, one PAID bill and one
   ``payment.captured.v1`` outbox row (published by the relay) per callback.

Ratio = callbacks/s ÷ the better trivial rate. CPU per request by process (``bench.messaging.cpu``)
and the whole machine's busy cores tell whether the client, a server or the machine's CPU is the
bottleneck; with the CPU saturated, the ratio tends to the CPU cost ratio (trivial CPU per request
÷ callback CPU per request, every process counted). ``--profile`` runs the api under cProfile.
Writes ``bench/results/callbacks.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import aio_pika
import asyncpg
import uvloop
from emeterai_shared.contracts.events import OrderPlaced, PaymentCaptured
from emeterai_shared.db import create_pool
from emeterai_shared.messaging.topology import QueueSpec, declare_consumer_queue
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import REPO_ROOT, free_port, reset_service, settings_for
from emeterai_testkit.platform import Platform, Proc
from payment_service.adapters.banks import BankRegistry, generate_bank_keys, new_bank_config
from payment_service.adapters.banksim import BankSimulator, SignedRequest
from payment_service.adapters.snap import PAYMENT_PATH
from payment_service.bootstrap import SERVICE
from payment_service.config import PaymentSettings
from payment_service.service_layer.billing import issue_bill

from bench.callbacks.load import Check, Load, client_session, fire
from bench.common import benchmark_broker, fresh_vhost, machine_info, rate_record
from bench.messaging.cpu import CpuMeter, machine_busy_s

DATABASE = "emeterai_bench_payment"
VHOST = "emeterai_bench"
SINK = QueueSpec("bench.callbacks.sink", ("payment.#",))
"""Takes what the relay publishes (no order service here), so no outbox row is unroutable."""
CAPTURED = "2002500"
TARGET_RATIO = 0.1
"""Issue 15 [6/7]: signed callbacks at a tenth of a trivial endpoint's rate or better."""
BILL_CHUNK = 1_000
RESULTS = Path(__file__).resolve().parents[1] / "results" / "callbacks.json"
REPORTED_SETTINGS = ("db_pool_max", "db_pool_min", "relay_batch_size", "snap_timestamp_skew_s", "log_level")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.callbacks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callbacks", type=int, default=5_000, help="timed payment callbacks (N)")
    parser.add_argument("--trivial", type=int, default=15_000,
                        help="timed trivial requests per trivial phase (the callbacks' requests, cycled)")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests before each phase")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a payment setting of the api and relay (repeatable)")
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE.prof",
                        help="run the payment api under cProfile and write its profile here")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


@dataclass
class CommandProc(Proc):
    """A ``Proc`` with its own command line: the trivial endpoint, or the api under cProfile."""

    argv: list[str] = field(default_factory=list)

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(self.argv, env={**self.env, **(extra_env or {})}, cwd=REPO_ROOT,
                                          stdout=log, stderr=subprocess.STDOUT)


def pid(proc: Proc) -> int:
    assert proc.popen is not None, f"{proc.service} {proc.kind} was not started"
    return proc.popen.pid


@dataclass(frozen=True)
class Phase:
    """One timed target: its load and the CPU each process spent on it."""

    load: Load
    cpu_ms: dict[str, float]
    cores: dict[str, float]
    """Cores each process kept busy (the servers' figures include other sessions' work)."""
    machine_cores: float
    """Cores the whole machine kept busy, with every other process on it."""

    def report(self) -> dict[str, Any]:
        return {**rate_record(self.load.rate), "errors": self.load.errors,
                "latency_ms": {"p50": round(self.load.percentile(0.5), 2),
                               "p99": round(self.load.percentile(0.99), 2)},
                "cpu_ms_per_request": self.cpu_ms, "cores_busy": self.cores,
                "machine_cores_busy": self.machine_cores}


def new_bank(directory: Path) -> tuple[dict[str, str], bytes, Path]:
    """A generated bank: (partners entry, private key PEM, partners file listing only it)."""
    private_pem, public_pem = generate_bank_keys()
    config = new_bank_config(public_pem, client_id="bench-bank")
    partners = directory / "banks.json"
    partners.write_text(json.dumps({"banks": [config]}))
    return config, private_pem, partners


async def declare_sink(settings: PaymentSettings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        await declare_consumer_queue(await connection.channel(), SINK)
    finally:
        await connection.close()


async def open_bills(pool: asyncpg.Pool, settings: PaymentSettings, count: int) -> list[tuple[str, int]]:
    """``count`` OPEN bills issued as for placed orders; returns (customer number, amount) of each."""
    banks = BankRegistry.load(Path(settings.partners_file))
    expiry, now = timedelta(seconds=settings.bill_expiry_s), datetime.now(UTC)
    for first in range(0, count, BILL_CHUNK):
        async with unit_of_work(pool) as uow:
            for _ in range(first, min(count, first + BILL_CHUNK)):
                order = OrderPlaced(order_id=uuid4(), account_id=uuid4(), quantity=1, amount=12_500,
                                    placed_at=now)
                await issue_bill(uow, banks, order, expiry, now)
    rows = await pool.fetch("SELECT customer_no, amount FROM bills WHERE status = 'OPEN' ORDER BY created_at")
    return [(r["customer_no"], r["amount"]) for r in rows]


async def wait_published(pool: asyncpg.Pool, platform: Platform, timeout_s: float = 120) -> None:
    """Until the relay has sent every outbox row (none parked)."""
    deadline = time.monotonic() + timeout_s
    while row := await pool.fetchrow("SELECT count(*) FILTER (WHERE sent_at IS NULL AND parked_at IS NULL) AS"
                                     " backlog, count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked"
                                     " FROM outbox"):
        if row["parked"]:
            raise RuntimeError(f"{row['parked']} outbox rows parked: see the relay log")
        if not row["backlog"]:
            return
        if time.monotonic() > deadline or not platform.proc("payment", "relay").alive:
            raise RuntimeError(f"outbox backlog {row['backlog']} not published: see the relay log")
        await asyncio.sleep(0.05)


def payment_answer(status: int, body: bytes) -> str | None:
    try:
        code = json.loads(body).get("responseCode")
    except ValueError:
        return f"HTTP {status}, not JSON"
    return None if code == CAPTURED else f"{code}"


def trivial_answer(status: int, _body: bytes) -> str | None:
    return None if status == 200 else f"HTTP {status}"


async def timed(meter: CpuMeter, origin: str, requests: list[SignedRequest], *,
                warmup: list[SignedRequest], concurrency: int, check: Check) -> Phase:
    """Warm up (connections, pools), then fire ``requests`` between two CPU snapshots."""
    async with client_session(concurrency) as session:
        await fire(session, origin, warmup, concurrency=concurrency, check=check)
        before, machine_before = meter.snapshot(), machine_busy_s()
        load = await fire(session, origin, requests, concurrency=concurrency, check=check)
        after, machine_after = meter.snapshot(), machine_busy_s()
    cpu = meter.per_message_ms(before, after, load.rate.count)
    wall = after.at - before.at
    cores = {k: round(v * load.rate.count / 1000 / wall, 2) for k, v in cpu.items()
             if k not in ("total", "busy_cores")}
    return Phase(load, cpu, cores, round((machine_after - machine_before) / wall, 2))


async def verify(pool: asyncpg.Pool, expected: int) -> dict[str, int]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM payments) AS payments,
                  (SELECT count(*) FROM bills WHERE status = 'PAID') AS bills_paid,
                  (SELECT count(*) FROM outbox WHERE message_type = $1) AS captured_outbox_rows,
                  (SELECT count(*) FROM outbox WHERE message_type = $1 AND sent_at IS NOT NULL) AS captured_published,
                  (SELECT count(*) FROM snap_requests WHERE response_code = $2) AS answered_2002500""",
        PaymentCaptured.TYPE, CAPTURED)
    result = {key: int(value) for key, value in row.items()}
    result["expected"] = expected
    return result


def bottleneck(phase: Phase, nproc: int) -> str:
    """Which process, or the machine's CPU, limits a phase, from the cores each kept busy."""
    name, cores = max(phase.cores.items(), key=lambda item: item[1])
    busy = f"{phase.cpu_ms['busy_cores']} cores ours, {phase.machine_cores} of {nproc} busy in all"
    if cores >= 0.9:
        return f"{name}: {cores} of its one core ({busy})"
    if phase.machine_cores >= 0.9 * nproc:
        return f"the machine's CPU ({busy}; most: {name} {cores})"
    return f"no CPU saturated, waits ({busy}; most: {name} {cores})"


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    config, private_pem, partners = new_bank(workdir)
    overrides = dict(item.split("=", 1) for item in args.overrides)
    settings = settings_for(PaymentSettings, database_name=DATABASE, amqp_url=fresh_vhost(VHOST),
                            partners_file=str(partners), log_level="WARNING", **overrides)
    assert isinstance(settings, PaymentSettings)
    await reset_service(SERVICE, settings)
    await declare_sink(settings)
    total = args.callbacks + args.warmup
    pool = await create_pool(settings.database_url, max_size=2)
    platform = Platform(logs=workdir)
    platform.add(SERVICE, settings)
    trivial_port = free_port()
    trivial = CommandProc("trivial", "api", {**os.environ}, trivial_port, workdir / "trivial.log",
                          argv=[sys.executable, "-m", "bench.callbacks.trivial", str(trivial_port)])
    platform.procs[("trivial", "api")] = trivial
    if args.profile is not None:
        api = platform.proc("payment", "api")
        platform.procs[("payment", "api")] = CommandProc(
            api.service, api.kind, api.env, api.port, api.log_path,
            argv=[sys.executable, "-m", "cProfile", "-o", str(args.profile.resolve()), "-m", "payment_service", "api"])
    try:
        bills = await open_bills(pool, settings, total)
        await platform.start(("payment", "api"), ("payment", "relay"), ("trivial", "api"))
        await wait_published(pool, platform)  # the bills' announcements go out before any timing
        api_url, trivial_url = platform.url("payment"), f"http://127.0.0.1:{trivial_port}"
        async with client_session(1) as session:
            bank = BankSimulator.from_config(api_url, config, private_pem, session=session)
            status, body = await bank.get_token()
            if bank.access_token is None:
                raise RuntimeError(f"no access token: HTTP {status} {body}")
            signed = [bank.build_signed_request(PAYMENT_PATH, bank.payment_body(customer_no, amount),
                                                access_token=bank.access_token)
                      for customer_no, amount in bills]
        warmup, callbacks = signed[:args.warmup], signed[args.warmup:]
        echoed = list(itertools.islice(itertools.cycle(callbacks), args.trivial))
        meter = CpuMeter({"payment api": pid(platform.proc("payment", "api")),
                          "payment relay": pid(platform.proc("payment", "relay")), "trivial": pid(trivial)})
        phases: dict[str, Phase] = {}
        phases["trivial"] = await timed(meter, trivial_url, echoed, warmup=warmup,
                                        concurrency=args.concurrency, check=trivial_answer)
        started = time.perf_counter()
        phases["callbacks"] = await timed(meter, api_url, callbacks, warmup=warmup,
                                          concurrency=args.concurrency, check=payment_answer)
        await wait_published(pool, platform)
        published_s = time.perf_counter() - started
        phases["trivial_again"] = await timed(meter, trivial_url, echoed, warmup=warmup,
                                              concurrency=args.concurrency, check=trivial_answer)
        checked = await verify(pool, total)
    finally:
        platform.stop()
        await pool.close()
    nproc = os.cpu_count() or 1
    trivial_per_s = max(phases["trivial"].load.rate.per_s, phases["trivial_again"].load.rate.per_s)
    callbacks_per_s = phases["callbacks"].load.rate.per_s
    expected_counts = {k: v for k, v in checked.items() if k != "expected"}
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "callbacks": args.callbacks,
        "trivial_requests": args.trivial,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "phases": {name: phase.report() for name, phase in phases.items()},
        "callbacks_per_s": round(callbacks_per_s, 1),
        "trivial_per_s": round(trivial_per_s, 1),
        "ratio": round(callbacks_per_s / trivial_per_s, 3),
        "cpu_cost_ratio": round(min(phases["trivial"].cpu_ms["total"], phases["trivial_again"].cpu_ms["total"])
                                / phases["callbacks"].cpu_ms["total"], 3),
        "target_ratio": TARGET_RATIO,
        "callbacks_published": {"count": total, "seconds": round(published_s, 3),  # warm-up included
                                "per_s": round(total / published_s, 1)},
        "bottleneck": {name: bottleneck(phase, nproc) for name, phase in phases.items()},
        "checked": {**checked, "ok": all(v == total for v in expected_counts.values())
                    and not phases["callbacks"].load.errors},
        "settings": {name: getattr(settings, name) for name in REPORTED_SETTINGS},
        "machine": await machine_info(settings, load_at_start),
    }


def print_table(report: dict[str, Any]) -> None:
    phases = report["phases"]
    print(f"\n{'measure':<40}{'count':>7}{'seconds':>9}{'per s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}")
    for name, label in (("trivial", "trivial aiohttp endpoint"), ("callbacks", "signed SNAP payment callbacks"),
                        ("trivial_again", "trivial aiohttp endpoint, again")):
        p = phases[name]
        print(f"{label:<40}{p['count']:>7}{p['seconds']:>9.2f}{p['per_s']:>8.0f}{p['latency_ms']['p50']:>8.1f}"
              f"{p['latency_ms']['p99']:>8.1f}{sum(p['errors'].values()):>8}")
    print(f"\nratio = {report['callbacks_per_s']:.0f} / {report['trivial_per_s']:.0f} = {report['ratio']:.3f}"
          f"  (target ≥ {report['target_ratio']}); callbacks published by the relay: "
          f"{report['callbacks_published']['per_s']:.0f}/s (warm-up included)")
    print(f"CPU cost ratio (trivial CPU ms per request ÷ callback CPU ms, every process): {report['cpu_cost_ratio']}")
    labels = [k for k in phases["callbacks"]["cpu_ms_per_request"] if k != "busy_cores"]
    print(f"\n{'CPU ms per request':<18}" + "".join(f"{label:>14}" for label in labels)
          + f"{'cores ours':>11}{'machine':>9}")
    for name, p in phases.items():
        cpu = p["cpu_ms_per_request"]
        print(f"{name:<18}" + "".join(f"{cpu[label]:>14.3f}" for label in labels)
              + f"{cpu['busy_cores']:>11}{p['machine_cores_busy']:>9}")
    for name, verdict in report["bottleneck"].items():
        print(f"bottleneck {name}: {verdict}")
    for name, errors in ((n, p["errors"]) for n, p in phases.items() if p["errors"]):
        print(f"errors {name}: {errors}")
    print(f"checked: {report['checked']}")
    machine = report["machine"]
    print("settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items())
          + f", concurrency={report['concurrency']}")
    print(f"machine: {machine['nproc']} cpu, Python {machine['python']}, PostgreSQL {machine['postgresql']}"
          f" (synchronous_commit={machine['postgresql_synchronous_commit']}), "
          f"load average {machine['loadavg_1m']['start']} → {machine['loadavg_1m']['end']}")


def print_profile(path: Path, lines: int = 30) -> None:
    print(f"\ncProfile of the payment api ({path}), by own time:")
    pstats.Stats(str(path)).strip_dirs().sort_stats("tottime").print_stats(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with benchmark_broker(VHOST), tempfile.TemporaryDirectory(prefix="bench-callbacks-") as workdir:
        report = uvloop.run(run(args, Path(workdir)))
    print_table(report)
    if args.profile is not None:
        print_profile(args.profile)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    if not report["checked"]["ok"]:
        print("verification FAILED: see checked and errors above", file=sys.stderr)
        return 1
    if report["ratio"] < TARGET_RATIO:
        print(f"below target ratio {TARGET_RATIO}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
