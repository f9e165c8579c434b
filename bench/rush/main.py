"""``make rush`` (``python -m bench.rush --buyers N``): a CASN registration rush against the platform.

Brings the platform up when it is not running (``bench.rush.platform``), measures the raw
database-commit and broker-confirm ceilings on a scratch database and vhost, then simulates
applicants (asyncio + aiohttp, one bounded connection pool: ``--connections-per-host`` 128; give it
one connection per applicant in flight, as phones have, to measure a long overload; the generator
runs at ``--generator-nice`` -5 once the platform is up) in three phases, so that each tier's
capacity is measured alone and together:

a. **purchases** (2/3 of the buyers): each applicant signs in with a code sent to its phone
   (``POST /v1/auth/otp``, the code read from the platform's development sink ``var/dev-sms.jsonl``,
   then ``POST /v1/auth/token``; ``--signin-share`` of them, the rest register with
   ``POST /v1/accounts``), orders 2 stamps, polls its bill,
   and the bank simulator pays it over signed SNAP callbacks: a share late (3-8 s after the bill),
   a share with the same callback sent twice at once (one capture), a share first paid with a
   wrong amount (refused ``4042513``, then paid right). Arrivals start at ``--start-rate``/s and
   grow by ``--ramp-factor`` every ``--step-s`` until the offered rate is ``--overload`` times the
   peak credited rate (or ``--ramp-share`` of the phase's applicants have arrived); the rest then
   arrive at that overload rate. The step where the platform first saturates (it sheds,
   payment-to-credited p95 passes 2 s, POST /v1/orders p95 passes 1 s, or the credited rate stays
   below the rate offered two steps earlier divided by 1.5) bounds the "below saturation" latencies. ``orders_per_s`` =
   FULFILLED orders per second from that step's start (or the 10th percentile of their times, if
   later) to the 90th percentile (``orders_per_s_p10_p90``: from the 10th percentile, ramp
   included, the figure of earlier runs); the overload
   goodput ratio (steady) = credited/s over the overload's last ``--overload-window-s`` (ending
   at the last arrival) over the best credited/s in any window as long before the last arrival,
   measured only when the overload lasted two windows or more (``figures.overload_goodput``; the
   earlier figure, the overload's first window over the best window of the whole phase with the
   drain after the last arrival, is reported as ``transient_goodput_ratio``).
b. **stamping** (the same applicants): each waits for its quota to show 2 available, uploads
   2 generated PDFs and polls them until DONE. ``documents_per_s`` = DONE documents per second
   from the phase's start to its last DONE.
c. **mixed** (the other 1/3, fresh): buy and stamp end to end, arriving at phase a's measured
   rate, both rates reported (10th-90th percentile windows).

QRIS: ``--qris-share`` of the applicants (half, as the CASN shop saw) order with ``payment_method:
"qris"``, wait for the QR in the order view, pay it at the QRIS acquirer simulator (``POST /sim/pay``,
a real HTTP server the rush runs and configures in the payment service's partners file) and wait
for the credit; the report gives their figures apart (``by_method``). ``--acquirer-outage-s N``
stops the acquirer (connection refused) for N seconds once ``--acquirer-outage-at`` of phase a's
applicants have arrived, then starts it again with its QRs: QRIS orders are answered ``503``
(waited out; after ``--qris-fallback-after`` ``qris_unavailable`` answers the applicant orders by
VA) or their QR comes late; the report's ``qris.outage`` counts them and compares VA credits
during the outage. Every QR paid at the simulator must end captured, and every captured payment
credited or refunded, per method.

Latencies and invariants are read from the services' databases, never from the simulator:
``payment_to_credited`` = order FULFILLED (order_history) - payment captured (payments), below
saturation; ``upload_to_stamped`` = stamped_at - created_at of DONE stampings. ``lost`` and
``duplicates`` cover the whole databases after the platform has drained; either above 0 makes
the exit status 1. The report is printed and written to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from emeterai_shared.db import drop_database, ensure_database
from emeterai_testkit import invariants
from emeterai_testkit.clients import Bank, Client, SmsInbox, Stats
from emeterai_testkit.platform import dev_bank
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.common import benchmark_broker, fresh_vhost, machine_info
from bench.messaging.raw import commit_ceiling, confirm_ceiling
from bench.rush.applicants import Applicant, Script, documents
from bench.rush.figures import (
    TERMINAL_ORDER,
    TERMINAL_STAMPING,
    Databases,
    cpu_per_unit,
    moving_peak,
    overload_goodput,
    per_unit_by_service,
    percentiles,
    rate_over,
    sustained_rate,
    sustained_window,
)
from bench.rush.platform import REPO, MetricsScraper, ProcessSampler, RushAcquirer, RushPlatform

RESULTS = REPO / "bench" / "results" / "latest.json"
SCRATCH_DATABASE = "emeterai_rush_scratch"
SCRATCH_VHOST = "emeterai_rush"
TARGETS = {"orders_per_s": 100.0, "p99_payment_to_credited_ms": 2000.0, "documents_per_s": 40.0,
           "overload_goodput_ratio": 0.9, "machine_busy_cores": 1.8, "platform_cpu_ms_per_order": 18.0}
SATURATION_P95_S = 2.0
"""Saturated once payment-to-credited p95 passes this (the target) ..."""
SATURATION_ORDER_P95_S = 1.0
"""... or POST /v1/orders answers slower than this at p95 (the front door's latency rises) ..."""
SATURATION_LAG = 1.5
"""... or the best credited rate so far is below the rate offered two steps earlier by this factor
(unsaturated, credits follow arrivals about a step and a half behind)."""
OVERLOAD_REACHED = 0.95
"""The ramp's last step runs at the overload rate itself; the overload starts once the rate offered
is within this of it (the peak it is a multiple of may have risen meanwhile)."""
MEMORY_CAP_MB = 1024.0

err = Console(stderr=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.rush", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buyers", type=int, default=int(os.environ.get("BUYERS", "2000")))
    parser.add_argument("--start-rate", type=float, default=20.0, help="phase a's first arrival rate (/s)")
    parser.add_argument("--ramp-factor", type=float, default=1.5)
    parser.add_argument("--step-s", type=float, default=2.0, help="seconds per ramp step")
    parser.add_argument("--overload", type=float, default=5.0, help="overload = this times the peak credited rate")
    parser.add_argument("--ramp-share", type=float, default=0.6,
                        help="at most this share of phase a's applicants arrive during the ramp; the rest "
                             "arrive at the overload rate")
    parser.add_argument("--overload-window-s", type=float, default=6.0,
                        help="credited rate measured over this long from the start of the overload")
    parser.add_argument("--signin-share", type=float, default=1.0,
                        help="share of applicants who sign in with a phone code; the rest register with "
                             "POST /v1/accounts")
    parser.add_argument("--late-share", type=float, default=0.1)
    parser.add_argument("--duplicate-share", type=float, default=0.1)
    parser.add_argument("--wrong-amount-share", type=float, default=0.1)
    parser.add_argument("--refund-share", type=float, default=0.1,
                        help="applicants who stamp one document and refund their other, unused stamp")
    parser.add_argument("--qris-share", type=float, default=0.5,
                        help="applicants who pay by QRIS (through the acquirer simulator); the rest by VA")
    parser.add_argument("--qris-fallback-after", type=int, default=3,
                        help="a QRIS applicant answered 503 qris_unavailable this many times orders by VA "
                             "instead (0: never)")
    parser.add_argument("--acquirer-outage-s", type=float, default=0.0,
                        help="stop the QRIS acquirer (connection refused) for this long during phase a (0: none)")
    parser.add_argument("--acquirer-outage-at", type=float, default=0.25,
                        help="the outage starts once this share of phase a's applicants have arrived")
    parser.add_argument("--connections", type=int, default=384, help="connection pool size in all")
    parser.add_argument("--connections-per-host", type=int, default=128)
    parser.add_argument("--poll-rate", type=float, default=40.0,
                        help="status polls (order FULFILLED, stamping DONE) per second per service, at most")
    parser.add_argument("--phase-timeout-s", type=float, default=300.0)
    parser.add_argument("--drain-timeout-s", type=float, default=180.0)
    parser.add_argument("--bank-dir", type=Path, default=REPO / "var" / "dev-bank",
                        help="the partner bank the simulator plays (bank.json, private_key.pem)")
    parser.add_argument("--generator-nice", type=int, default=-5,
                        help="the load generator's scheduling priority once the platform is up (0: as started); "
                             "it plays thousands of phones with CPUs of their own, so it is not left to queue "
                             "for the cores behind the platform it loads")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the raw ceilings (debugging)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


# --- the run ---------------------------------------------------------------------------------

@dataclass
class Clock:
    """Monotonic time of this process mapped to the database server's clock (same machine)."""

    db: datetime
    mono: float

    def at(self, mono: float) -> datetime:
        return self.db + timedelta(seconds=mono - self.mono)


@dataclass
class Run:
    args: argparse.Namespace
    platform: RushPlatform
    dbs: Databases
    script: Script
    stats: Stats
    progress: Progress
    sampler: ProcessSampler
    scraper: MetricsScraper
    live: set[asyncio.Task[None]]
    acquirer: RushAcquirer
    acquirer_stats: Stats
    """What the payers saw at the acquirer simulator (apart from the platform's answers)."""
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    applicants: dict[str, list[Applicant]] = field(default_factory=dict)
    outage: asyncio.Task[None] | None = None
    origin: Clock | None = None
    """This process's clock mapped to the database's, taken before the phases."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """An applicant's task, cancelled if the run stops early."""
        task = asyncio.create_task(coro)
        self.live.add(task)
        task.add_done_callback(self.live.discard)
        return task

    async def clock(self) -> Clock:
        return Clock(await self.dbs.now(), time.monotonic())


def scenarios(count: int, args: argparse.Namespace, rng: random.Random) -> list[str]:
    """The payment scenario of each applicant: disjoint shares, shuffled."""
    shares = (("late", args.late_share), ("duplicate", args.duplicate_share),
              ("wrong_amount", args.wrong_amount_share))
    out: list[str] = []
    for name, share in shares:
        out += [name] * round(count * share)
    out += ["normal"] * max(0, count - len(out))
    rng.shuffle(out)
    return out[:count]


async def watch(run: Run, until: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await until():
            return True
        await asyncio.sleep(every_s)
    return False


async def gather_applicants(tasks: list[asyncio.Task[None]], timeout_s: float) -> int:
    """Wait for the applicants' tasks; those still running after ``timeout_s`` are cancelled."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


async def phase_purchase(run: Run, applicants: list[Applicant]) -> dict[str, Any]:
    """Phase a: arrivals ramping past capacity, then held at the overload rate."""
    args, stats, script = run.args, run.stats, run.script
    bar_arrived = run.progress.add_task("a purchases: arrived", total=len(applicants))
    bar_credited = run.progress.add_task("a purchases: credited (FULFILLED)", total=len(applicants))
    clock = await run.clock()
    start_mono = clock.mono
    run.sampler.marks["a_start"] = start_mono
    tasks: list[asyncio.Task[None]] = []
    rate, step_start, step_first = args.start_rate, start_mono, 0
    steps: list[dict[str, Any]] = []
    plateau_start: float | None = None
    plateau_first = 0
    saturated: tuple[float, str] | None = None
    ramp_budget = int(len(applicants) * args.ramp_share)
    outage_after = int(len(applicants) * args.acquirer_outage_at) if args.acquirer_outage_s > 0 else None
    peak = 0.0
    next_at = start_mono

    async def end_step(now: float, *, last: bool = False) -> None:
        nonlocal rate, step_start, step_first, plateau_start, plateau_first, saturated, peak
        fulfilled = await run.dbs.fulfilled_since(clock.db)
        peak = max(peak, moving_peak(fulfilled)[0])
        orders = [a.order_id for a in applicants if a.order_id]
        credited = await run.dbs.credited(orders)
        since = clock.at(step_start)
        recent = [(t - credited["captured"][o]).total_seconds() for o, t in credited["fulfilled"].items()
                  if t >= since and o in credited["captured"]]
        p95 = percentiles(recent)["p95"]
        # qris_unavailable answers are the acquirer's outage, not the platform saturating
        shed = stats.count("shed", step_start, now) - sum(
            1 for t in script.qris_unavailable_at if step_start <= t <= now)
        order_p95 = stats.p95_ms("POST /v1/orders", step_start, now)
        step = {"offered_per_s": round(rate, 1), "arrived": len(tasks) - step_first,
                "seconds": round(now - step_start, 2), "credited_in_step": len(recent),
                "peak_credited_per_s": peak, "payment_to_credited_p95_ms": p95,
                "post_orders_p95_ms": order_p95, "shed": shed, "errors": stats.count("error", step_start, now)}
        steps.append(step)
        if saturated is None:
            if shed:
                saturated = (step_start, f"shedding at {rate:.0f}/s offered")
            elif p95 is not None and p95 > 1000 * SATURATION_P95_S and len(recent) >= 10:
                saturated = (step_start, f"payment-to-credited p95 {p95:.0f} ms at {rate:.0f}/s offered")
            elif order_p95 is not None and order_p95 > 1000 * SATURATION_ORDER_P95_S:
                saturated = (step_start, f"POST /v1/orders p95 {order_p95:.0f} ms at {rate:.0f}/s offered")
            elif len(steps) >= 3 and steps[-3]["offered_per_s"] > SATURATION_LAG * peak:
                saturated = (step_start, f"credited {peak:.0f}/s at most while {steps[-3]['offered_per_s']:.0f}/s "
                                         f"were offered two steps earlier")
        if not last and plateau_start is None:
            overload_rate = args.overload * max(peak, args.start_rate)
            if rate >= OVERLOAD_REACHED * overload_rate or len(tasks) >= ramp_budget:
                rate = max(rate, args.overload * peak)  # the rest arrive at the overload rate
                plateau_start, plateau_first = now, len(tasks)
                if saturated is None:
                    saturated = (now, f"overload started at {rate:.0f}/s offered")
            else:  # never past the overload rate: a last x1.5 step overshot it (6.5 x instead of 4 x)
                rate = min(rate * args.ramp_factor, overload_rate)
        step_start, step_first = now, len(tasks)

    async def progress() -> None:
        while True:
            with contextlib.suppress(Exception):  # progress only: a failed look-up waits for the next
                statuses = await run.dbs.order_statuses([a.order_id for a in applicants if a.order_id])
                run.progress.update(bar_credited, completed=statuses.get("FULFILLED", 0))
            run.progress.update(bar_arrived, completed=len(tasks), description=(
                f"a purchases: arrived ({rate:.0f}/s offered, shed {stats.answers['shed']}, "
                f"errors {stats.answers['error']})"))
            await asyncio.sleep(1.0)

    monitor = asyncio.create_task(progress())
    try:
        for a in applicants:
            now = time.monotonic()
            if now - step_start >= args.step_s:
                await end_step(now)
            next_at = max(next_at + 1 / rate, now - 0.5)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            tasks.append(run.spawn(script.buy(a)))
            if outage_after is not None and len(tasks) >= outage_after and run.outage is None:
                run.outage = run.spawn(run.acquirer.outage(args.acquirer_outage_s))
        last_arrival = time.monotonic()
        await end_step(last_arrival, last=True)

        async def settled() -> bool:
            statuses = await run.dbs.order_statuses([a.order_id for a in applicants if a.order_id])
            placed = sum(1 for a in applicants if a.order_id)
            open_applicants = sum(1 for t in tasks if not t.done())
            done = sum(statuses.get(s, 0) for s in TERMINAL_ORDER)
            return open_applicants == 0 or (done >= placed and all(a.order_id or a.failure for a in applicants))

        await watch(run, settled, args.phase_timeout_s)
        left = await gather_applicants(tasks, 30)
    finally:
        monitor.cancel()
    end = time.monotonic()
    run.sampler.marks["a_end"] = end
    run.progress.update(bar_arrived, completed=len(tasks))
    ids = [a.order_id for a in applicants if a.order_id]
    run.progress.update(bar_credited, completed=(await run.dbs.order_statuses(ids)).get("FULFILLED", 0))

    credited = await run.dbs.credited(ids)
    fulfilled_times = list(credited["fulfilled"].values())
    latencies = {o: (t - credited["captured"][o]).total_seconds()
                 for o, t in credited["fulfilled"].items() if o in credited["captured"]}
    saturation_db = clock.at(saturated[0]) if saturated else None
    below = [v for o, v in latencies.items()
             if saturation_db is None or credited["captured"][o] < saturation_db]
    # the peak over windows as long as the overload window, so that both are measured alike
    peak_rate, peak_at = moving_peak(fulfilled_times, args.overload_window_s)
    overload: dict[str, Any] = {"reached": False, "why": "too few applicants to reach the overload rate"}
    overload_windows: dict[str, tuple[float, float]] | None = None
    if plateau_start is not None:
        plateau_rate = round(rate, 1)
        figures = overload_goodput(fulfilled_times, plateau_start=clock.at(plateau_start),
                                   last_arrival=clock.at(last_arrival), window_s=args.overload_window_s)
        # the two windows the steady goodput compares, in monotonic time (for their CPU by process)
        _, best_end = moving_peak([t for t in fulfilled_times if t <= clock.at(last_arrival)],
                                  args.overload_window_s)
        if best_end is not None:
            best_mono = clock.mono + (best_end - clock.db).total_seconds()
            overload_windows = {"best": (best_mono - args.overload_window_s, best_mono),
                                "last": (last_arrival - args.overload_window_s, last_arrival)}
        peak_arriving = figures["peak_while_arriving_per_s"]
        overload = {
            "reached": True, "offered_per_s": plateau_rate,
            "offered_over_peak": round(plateau_rate / peak_arriving, 2) if peak_arriving else None,
            "seconds_at_overload": round(last_arrival - plateau_start, 2),
            "applicants_at_overload": len(tasks) - plateau_first,
            **figures,
            "shed": stats.count("shed", plateau_start, end),
            "errors": stats.count("error", plateau_start, end),
        }
    window = sustained_window(fulfilled_times, not_before=saturation_db)
    return {
        "applicants": len(applicants), "orders": len(ids), "fulfilled": len(fulfilled_times),
        "orders_per_s": sustained_rate(fulfilled_times, not_before=saturation_db),
        "orders_per_s_p10_p90": sustained_rate(fulfilled_times),
        "sustained_window": ({"from_s": round((window[0] - clock.db).total_seconds(), 1),
                              "to_s": round((window[1] - clock.db).total_seconds(), 1), "credited": window[2],
                              "from": ("saturation" if saturation_db is not None and window[0] >= saturation_db
                                       else "10th percentile")} if window else None),
        "_sustained": (clock.mono + (window[0] - clock.db).total_seconds(),
                       clock.mono + (window[1] - clock.db).total_seconds(), window[2]) if window else None,
        "peak_credited_per_s": peak_rate,
        "peak_at_s": round((peak_at - clock.db).total_seconds(), 1) if peak_at else None,
        "seconds": round(end - start_mono, 1), "arrivals_s": round(last_arrival - start_mono, 1),
        "steps": steps, "saturation": ({"at_s": round(saturated[0] - start_mono, 1), "why": saturated[1]}
                                       if saturated else None),
        "payment_to_credited_below_saturation": percentiles(below),
        "payment_to_credited_all": percentiles(list(latencies.values())),
        "capture_to_paid": percentiles([(credited["paid"][o] - credited["captured"][o]).total_seconds()
                                        for o in credited["paid"] if o in credited["captured"]]),
        "overload": overload, "applicants_cancelled": left, "_overload_windows": overload_windows,
        "_window": (start_mono, end),
    }


async def wait_stampings(run: Run, applicants: list[Applicant], tasks: list[asyncio.Task[None]],
                         bar: TaskID, label: str) -> None:
    async def settled() -> bool:
        ids = [s for a in applicants for s in a.stamping_ids]
        statuses = await run.dbs.stamping_statuses(ids)
        done = statuses.get("DONE", 0)
        run.progress.update(bar, completed=done, description=(
            f"{label}: stamped (DONE) (shed {run.stats.answers['shed']}, errors {run.stats.answers['error']})"))
        uploading = any(not t.done() for t in tasks) and any(
            len(a.stamping_ids) < a.uploads and a.failure is None for a in applicants)
        return not uploading and sum(statuses.get(s, 0) for s in TERMINAL_STAMPING) >= len(ids)

    await watch(run, settled, run.args.phase_timeout_s)


async def stamping_figures(run: Run, applicants: list[Applicant], start: datetime) -> dict[str, Any]:
    ids = [s for a in applicants for s in a.stamping_ids]
    rows = await run.dbs.stamped(ids)
    done = [r for r in rows if r["status"] == "DONE"]
    times = [r["stamped_at"] for r in done]
    return {"uploaded": len(ids), "done": len(done), "failed": sum(1 for r in rows if r["status"] == "FAILED"),
            "failed_errors": sorted({str(r["error"]) for r in rows if r["status"] == "FAILED"})[:5],
            "documents_per_s": rate_over(times, start), "sustained_per_s": sustained_rate(times),
            "upload_to_stamped": percentiles([(r["stamped_at"] - r["created_at"]).total_seconds() for r in done])}


async def phase_stamping(run: Run, applicants: list[Applicant]) -> dict[str, Any]:
    """Phase b: every credited applicant of phase a stamps its 2 documents at once."""
    ready = [a for a in applicants if a.failure is None and a.order_id]
    bar = run.progress.add_task("b stamping: stamped (DONE)", total=sum(a.uploads for a in ready))
    run.script.reset_pacers()
    clock = await run.clock()
    run.sampler.marks["b_start"] = clock.mono
    tasks = [run.spawn(run.script.stamp(a)) for a in ready]
    await wait_stampings(run, ready, tasks, bar, "b stamping")
    run.script.pacers["stamping"].release()
    left = await gather_applicants(tasks, 30)
    end = time.monotonic()
    run.sampler.marks["b_end"] = end
    figures = await stamping_figures(run, ready, clock.db)
    return {"applicants": len(ready), **figures, "seconds": round(end - clock.mono, 1),
            "applicants_cancelled": left, "_window": (clock.mono, end)}


async def phase_mixed(run: Run, applicants: list[Applicant], rate: float) -> dict[str, Any]:
    """Phase c: fresh applicants buying and stamping end to end, arriving at ``rate``/s."""
    bar_credited = run.progress.add_task("c mixed: credited (FULFILLED)", total=len(applicants))
    bar_done = run.progress.add_task("c mixed: stamped (DONE)", total=sum(a.uploads for a in applicants))
    run.script.reset_pacers()
    clock = await run.clock()
    run.sampler.marks["c_start"] = clock.mono
    tasks: list[asyncio.Task[None]] = []

    async def progress() -> None:
        while True:
            with contextlib.suppress(Exception):  # progress only: a failed look-up waits for the next
                statuses = await run.dbs.order_statuses([a.order_id for a in applicants if a.order_id])
                run.progress.update(bar_credited, completed=statuses.get("FULFILLED", 0))
            await asyncio.sleep(1.0)

    monitor = asyncio.create_task(progress())
    try:
        next_at = clock.mono
        for a in applicants:
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            tasks.append(run.spawn(run.script.buy_and_stamp(a)))
        arrivals = time.monotonic() - clock.mono

        async def bought() -> bool:
            return all(a.fulfilled or a.failure for a in applicants)

        await watch(run, bought, run.args.phase_timeout_s)
        await wait_stampings(run, applicants, tasks, bar_done, "c mixed")
        run.script.pacers["stamping"].release()
        left = await gather_applicants(tasks, 30)
    finally:
        monitor.cancel()
    end = time.monotonic()
    run.sampler.marks["c_end"] = end
    ids = [a.order_id for a in applicants if a.order_id]
    run.progress.update(bar_credited, completed=(await run.dbs.order_statuses(ids)).get("FULFILLED", 0))
    credited = await run.dbs.credited(ids)
    stamping = await stamping_figures(run, applicants, clock.db)
    return {
        "applicants": len(applicants), "arrival_per_s": round(rate, 1), "arrivals_s": round(arrivals, 1),
        "orders": len(ids), "fulfilled": len(credited["fulfilled"]),
        "orders_per_s": sustained_rate(list(credited["fulfilled"].values())),
        "documents_per_s": stamping["sustained_per_s"], "documents_per_s_over_phase": stamping["documents_per_s"],
        "stamping": stamping,
        "payment_to_credited": percentiles([(t - credited["captured"][o]).total_seconds()
                                            for o, t in credited["fulfilled"].items() if o in credited["captured"]]),
        "seconds": round(end - clock.mono, 1), "applicants_cancelled": left, "_window": (clock.mono, end),
    }


async def warm_up(run: Run, count: int = 2) -> dict[str, Any]:
    """A few applicants buy and stamp before the measured phases (not counted): the services'
    PDF process pools and connection pools start here, not inside phase b's figures."""
    started = time.monotonic()
    applicants = [Applicant(i, "w") for i in range(count)]
    if run.args.qris_share > 0:  # the QR path (the worker's acquirer token, the simulator) warmed too
        applicants[-1].method = "qris"
    await asyncio.gather(*(run.spawn(run.script.buy_and_stamp(a)) for a in applicants))
    run.script.reset_pacers()
    return {"applicants": count, "seconds": round(time.monotonic() - started, 1),
            "failures": [a.failure for a in applicants if a.failure]}


async def measure_ceiling(pg_base_url: str) -> dict[str, Any]:
    """Raw commits/s and confirms/s (bench.messaging's functions) on a scratch database and vhost."""
    url = f"{pg_base_url.rstrip('/')}/{SCRATCH_DATABASE}"
    await ensure_database(url)
    try:
        commits = await commit_ceiling(url, total=4_000, connections=8)
    finally:
        await drop_database(url)
    amqp_url = await asyncio.to_thread(fresh_vhost, SCRATCH_VHOST)
    try:
        confirms = await confirm_ceiling(amqp_url, total=10_000, in_flight=500)
    finally:
        await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "delete_vhost", SCRATCH_VHOST],
                                capture_output=True, check=False)
    return {"db_commits_per_s": round(commits.per_s, 1), "broker_confirms_per_s": round(confirms.per_s, 1),
            "db_commits": {"count": commits.count, "seconds": round(commits.seconds, 2), "connections": 8},
            "broker_confirms": {"count": confirms.count, "seconds": round(confirms.seconds, 2), "in_flight": 500}}


async def drain(run: Run) -> dict[str, Any]:
    """Wait until every captured payment is credited or refunded (or the timeout), then check. A
    payment whose only pending step is a parked message is not waited for: it is lost."""
    started = time.monotonic()
    bar = run.progress.add_task("drain: captured payments unresolved", total=None)

    paid_qrs = run.acquirer.paid_references()  # QRs paid at the acquirer: each must be captured
    uncaptured: set[str] = set(paid_qrs)

    async def resolved() -> bool:
        nonlocal uncaptured
        unresolved = invariants.unresolved(await run.dbs.snapshot())
        if uncaptured:
            uncaptured -= await run.dbs.captured_references(sorted(uncaptured))
        run.progress.update(bar, description=f"drain: {unresolved} captured payments unresolved, "
                                             f"{len(uncaptured)} QRs paid at the acquirer not captured")
        return unresolved == 0 and not uncaptured

    await watch(run, resolved, run.args.drain_timeout_s, every_s=2.0)
    run.progress.update(bar, total=1, completed=1)
    data = await run.dbs.snapshot()
    return {"seconds": round(time.monotonic() - started, 1), "lost": invariants.lost(data),
            "qris_uncaptured": {"paid_at_acquirer": len(paid_qrs), "not_captured": sorted(uncaptured)[:10],
                                "count": len(uncaptured)},
            "duplicates": invariants.duplicates(data), "refunds": invariants.refunds(data),
            "refund_violations": {k: v[:10] for k, v in invariants.refund_violations(data).items() if v}}


async def method_figures(run: Run) -> dict[str, Any]:
    """Phases a and c by payment method (a QRIS applicant who fell back to VA counts as VA), the
    QRIS share's sheds and late QRs, and the acquirer's outage: what QRIS applicants met during
    it, and VA payments credited during it against the rest of phase a."""
    apps = [a for p in ("a", "c") for a in run.applicants.get(p, [])]
    out: dict[str, Any] = {}
    credited_by: dict[str, dict[str, Any]] = {}
    for method in ("va", "qris"):
        mine = [a for a in apps if a.method == method]
        ids = [a.order_id for a in mine if a.order_id]
        credited = credited_by[method] = await run.dbs.credited(ids)
        out[method] = {
            "applicants": len(mine), "orders": len(ids), "paid": sum(1 for a in mine if a.paid_at is not None),
            "credited": len(credited["fulfilled"]), "failed": sum(1 for a in mine if a.failure),
            "payment_to_credited": percentiles([
                (t - credited["captured"][o]).total_seconds()
                for o, t in credited["fulfilled"].items() if o in credited["captured"]]),
        }
    wanted = [a for a in apps if a.wanted_qris]
    qris = [a for a in apps if a.method == "qris"]
    waits = [a.billed_at - a.ordered_at for a in qris if a.billed_at is not None and a.ordered_at is not None]
    out["qris"] |= {
        "share": run.args.qris_share, "chose_qris": len(wanted),
        "fell_back_to_va": sum(1 for a in wanted if a.fell_back),
        "orders_shed": sum(1 for a in wanted if a.qris_sheds), "shed_answers": sum(a.qris_sheds for a in wanted),
        "shed_by_code": dict(run.script.qris_shed_codes),
        "order_to_qr": percentiles(waits), "notify_failed_at_acquirer": run.script.notify_failed,
        "payer_calls": {"answers": dict(run.acquirer_stats.statuses), "transport_failures_retried": sum(
            n for k, n in run.acquirer_stats.errors.items() if k.endswith("transport"))},
    }
    if run.acquirer.outages and run.origin is not None:
        o = run.acquirer.outages[0]
        start, end = o["start"], o["end"]
        t0, t1 = run.origin.at(start), run.origin.at(end)
        phase_a = run.phases.get("a", {}).get("_window", (start, end))
        va = credited_by["va"]

        def va_latencies(inside: bool) -> list[float]:
            return [(t - va["captured"][oid]).total_seconds() for oid, t in va["fulfilled"].items()
                    if oid in va["captured"] and (t0 <= va["captured"][oid] <= t1) == inside
                    and run.origin is not None and va["captured"][oid] >= run.origin.at(phase_a[0])]

        a_wanted = [a for a in run.applicants.get("a", []) if a.wanted_qris]
        out["outage"] = {
            "seconds": round(end - start, 1), "from_s": round(start - phase_a[0], 1),
            "to_s": round(end - phase_a[0], 1), "scope": "seconds from the start of phase a",
            "qris_answered_503_qris_unavailable": sum(1 for t in run.script.qris_unavailable_at if start <= t <= end),
            "qris_orders_shed": sum(1 for a in a_wanted if a.qris_sheds),
            "qris_fell_back_to_va": sum(1 for a in a_wanted if a.fell_back),
            "qris_queued_qr_late": sum(1 for a in a_wanted if a.method == "qris" and a.ordered_at is not None
                                       and a.ordered_at < end and a.billed_at is not None and a.billed_at >= end),
            "note": "queued: ordered before the acquirer came back, QR seen after it",
            "va_payment_to_credited_during": percentiles(va_latencies(True)),
            "va_payment_to_credited_rest_of_run": percentiles(va_latencies(False)),
        }
    return out


# --- bottleneck ------------------------------------------------------------------------------

def _tier_of(name: str) -> str:
    """'queue order.on_payment_captured' -> 'order worker'; 'outbox payment' -> 'payment relay'."""
    kind, _, rest = name.partition(" ")
    if kind == "queue":
        return f"{rest.split('.', 1)[0]} worker"
    if kind == "outbox":
        return f"{rest} relay"
    return f"{rest} api (admission)"


def bottleneck_of(run: Run, phase: dict[str, Any], what: str, units: int) -> dict[str, Any]:
    """Which tier held ``what`` back during ``phase``, from the services' metrics and the CPU:
    a queue or outbox that grew (its consumer or relay), else an api whose requests took long in
    the server (the front door), else the busiest process."""
    start, end = phase["_window"]
    backlogs = run.scraper.backlogs(start, end)
    queues = {k: v for k, v in backlogs.items() if not k.startswith("admission")}
    server = run.scraper.server_latency(start, end)
    in_flight = run.scraper.in_flight_max(start, end)
    cpu = run.sampler.cpu_between(start, end)
    busy = cpu.get("machine_busy", 0.0)
    rush_cpu = {k: v for k, v in cpu.items() if k != "machine_busy"}
    top = sorted(rush_cpu.items(), key=lambda kv: -kv[1])[:6]
    ours = round(sum(rush_cpu.values()), 2)  # platform processes, PostgreSQL, RabbitMQ, load generator
    worst_queue = max(queues.items(), key=lambda kv: kv[1]["max"], default=None)
    slow_route = next(iter(server.items()), None)
    if worst_queue is not None and worst_queue[1]["max"] >= 100:
        name, values = worst_queue
        tier = _tier_of(name)
        why = (f"{name} grew to {values['max']:.0f} (first {values['first']:.0f}, last {values['last']:.0f}): "
               f"the {tier} drains slower than work arrives")
    elif slow_route is not None and slow_route[1]["mean_ms"] >= 250:
        route, figures = slow_route
        service = route.split(" ", 1)[0]
        tier = f"{service} api (front door)"
        why = (f"no queue or outbox grew past 100, but {route} took {figures['mean_ms']:.0f} ms on average in "
               f"the server ({figures['requests']} requests, up to {in_flight.get(service, 0):.0f} in flight): "
               f"work waits in front of the {service} api, not in the queues")
    else:
        tier = top[0][0] if top else "unknown"
        why = (f"no queue or outbox backlog grew past 100 and no api route averaged 250 ms; the busiest "
               f"process is {tier} ({top[0][1] if top else 0} cores)")
    if busy >= 0.85 * (os.cpu_count() or 2):
        why += f"; the machine was CPU-bound ({busy} of {os.cpu_count()} cores busy"
        other = round(busy - ours, 2)
        why += (f", of which {other} went to other work on the machine: the rush got only {ours})"
                if other > 0.3 * busy else ", load generator included)")
    seconds = end - start
    cpu_ms = round(1000 * (ours - rush_cpu.get("bench", 0.0)) * seconds / units, 1) if units else None
    return {"target": what, "tier": tier, "why": why, "backlogs": backlogs,
            "server_ms_by_route": dict(list(server.items())[:8]), "in_flight_max": in_flight,
            "cpu_cores_by_process": dict(top), "machine_busy_cores": busy, "rush_cores": ours,
            "platform_cpu_ms_per_unit": cpu_ms,
            "db_queries_per_unit": per_unit_by_service(run.scraper.db_queries_between(start, end), units),
            "handler_ms_mean": run.scraper.handler_ms()}


# --- report ----------------------------------------------------------------------------------

def target(value: float | int | None, goal: float, *, at_most: bool = False) -> dict[str, Any]:
    met = value is not None and (value <= goal if at_most else value >= goal)
    return {"value": value, "target": f"{'<=' if at_most else '>='} {goal:g}", "met": met}


def purchase_cpu(run: Run, a: dict[str, Any]) -> dict[str, Any]:
    """The CPU of phase a while the platform was saturated: over the window in which the sustained
    credited rate is measured (from saturation, or the 10th percentile of the FULFILLED times if
    later, to their 90th percentile), the machine's busy
    cores and the CPU milliseconds per order credited in it, by process and for the platform."""
    window = a.get("_sustained")
    if window is None:
        return {"why": "too few credited orders for a sustained window"}
    start, end, credited = window
    figures = cpu_per_unit(run.sampler.cpu_between(start, end), end - start, credited)
    # statements sent to PostgreSQL per order credited in the window (every process counts them in
    # emeterai_db_queries_total when the rush started the platform; None for one found running
    # without EMETERAI_DB_COUNT_QUERIES=true)
    figures["db_queries_per_order"] = per_unit_by_service(run.scraper.db_queries_between(start, end), credited)
    figures["note"] = ("over the window of the sustained rate (from saturation, or the 10th percentile of "
                       "the FULFILLED times of phase a if later, to their 90th percentile); the platform is "
                       "every process but the load generator (bench)")
    return figures


def overload_cpu(run: Run, windows: dict[str, tuple[float, float]] | None) -> dict[str, Any]:
    """The CPU by process in the two windows the steady overload goodput compares (the best while
    applicants arrived, the overload's last): where the cores went when the credited rate fell."""
    if not windows:
        return {}
    best, last = (run.sampler.cpu_between(*windows[k]) for k in ("best", "last"))

    def platform(cores: dict[str, float]) -> float:
        return round(sum(v for k, v in cores.items() if k not in ("bench", "machine_busy")), 2)

    return {"cpu_cores_best_window": best, "cpu_cores_last_window": last,
            "cores_best_to_last": f"from the best window to the overload's last: load generator "
                                  f"{best.get('bench', 0.0)} → {last.get('bench', 0.0)} cores, platform "
                                  f"{platform(best)} → {platform(last)}, machine busy "
                                  f"{best.get('machine_busy', 0.0)} → {last.get('machine_busy', 0.0)}"}


def public(phase: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in phase.items() if not k.startswith("_")}


def build_report(run: Run, *, buyers: int, split: dict[str, int], ceiling: dict[str, Any],
                 machine: dict[str, Any], duration_s: float, checks: dict[str, Any]) -> dict[str, Any]:
    a, b, c = run.phases["a"], run.phases["b"], run.phases["c"]
    stats = run.stats
    lost = len(checks["lost"]["lost_orders"]) + checks["qris_uncaptured"]["count"]
    duplicates = checks["duplicates"]["total"]
    memory = run.sampler.memory(MEMORY_CAP_MB)
    overload = a.get("overload") or {}
    ptc = a["payment_to_credited_below_saturation"]
    saturated_cpu = purchase_cpu(run, a)
    targets = {
        "orders_per_s": target(a["orders_per_s"], TARGETS["orders_per_s"]),
        "p99_payment_to_credited_ms": target(ptc["p99"], TARGETS["p99_payment_to_credited_ms"], at_most=True),
        "documents_per_s": target(b["documents_per_s"], TARGETS["documents_per_s"]),
        "overload_goodput_ratio": target(overload.get("goodput_ratio"), TARGETS["overload_goodput_ratio"]),
        "overload_errors": target(overload.get("errors"), 0, at_most=True),
        "machine_busy_cores": target(saturated_cpu.get("machine_busy_cores"), TARGETS["machine_busy_cores"]),
        "platform_cpu_ms_per_order": target(saturated_cpu.get("platform_cpu_ms_per_unit"),
                                            TARGETS["platform_cpu_ms_per_order"], at_most=True),
        "memory_bounded": {"value": memory.get("bounded"), "target": "true", "met": bool(memory.get("bounded"))},
        "lost": target(lost, 0, at_most=True),
        "duplicates": target(duplicates, 0, at_most=True),
    }
    bottleneck: dict[str, Any] = {}
    if not (targets["orders_per_s"]["met"] and targets["p99_payment_to_credited_ms"]["met"]):
        if a.get("saturation") is None:
            peak_offered = max((s["offered_per_s"] for s in a["steps"]), default=0)
            bottleneck["purchase"] = {
                "target": "orders_per_s", "tier": "load (too few buyers)",
                "why": f"the platform never saturated: at most {peak_offered:.0f} applicants/s were offered "
                       f"and {a['orders_per_s']} orders/s credited; run with more BUYERS"}
        else:
            bottleneck["purchase"] = bottleneck_of(run, a, "orders_per_s / payment_to_credited", a["fulfilled"])
    if not targets["documents_per_s"]["met"]:
        bottleneck["stamping"] = bottleneck_of(run, b, "documents_per_s", b["done"])
    if not (targets["overload_goodput_ratio"]["met"] and targets["overload_errors"]["met"]):
        if not overload.get("reached"):
            bottleneck["overload"] = {"target": "overload goodput", "tier": "load (too few buyers)",
                                      "why": "the overload rate was never reached: run with more BUYERS"}
        elif overload.get("goodput_ratio") is None:
            bottleneck["overload"] = {"target": "overload goodput", "tier": "load (too few buyers)",
                                      "why": overload.get("why", "no steady overload to measure")}
        else:
            bottleneck["overload"] = bottleneck_of(run, a, "overload goodput", a["fulfilled"])
            bottleneck["overload"].update(overload_cpu(run, a.get("_overload_windows")))
    orders_fulfilled = a["fulfilled"] + c["fulfilled"]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "buyers": buyers,
        "signin": {"share": run.args.signin_share,
                   "signed_in": sum(1 for p in ("a", "c") for x in run.applicants.get(p, []) if x.signs_in),
                   "note": "applicants who signed in with a phone code (POST /v1/auth/otp + /v1/auth/token); "
                           "the others registered with POST /v1/accounts"},
        "split": {"purchase_and_stamping_phases_a_b": split["ab"], "mixed_phase_c": split["c"],
                  "note": "phases a and b use the same applicants (they buy in a, stamp in b); phase c fresh ones"},
        "orders": a["orders"] + c["orders"],
        "orders_fulfilled": orders_fulfilled,
        "stamps_minted": checks["stamps_minted"],
        "documents_stamped": b["done"] + c["stamping"]["done"],
        "duration_s": round(duration_s, 1),
        "orders_per_s": a["orders_per_s"],
        "documents_per_s": b["documents_per_s"],
        "mixed": {"orders_per_s": c["orders_per_s"], "documents_per_s": c["documents_per_s"]},
        "latency_ms": {
            "payment_to_credited": {**ptc, "scope": "phase a, payments captured below saturation"},
            "upload_to_stamped": {**b["upload_to_stamped"], "scope": "phase b"},
            "payment_to_credited_phase_a_all": a["payment_to_credited_all"],
            "payment_to_credited_mixed": c["payment_to_credited"],
            "upload_to_stamped_mixed": c["stamping"]["upload_to_stamped"],
            "http_client": {route: percentiles([v / 1000 for v in values])
                            for route, values in sorted(stats.latency_ms.items())},
        },
        "shed": {"total": stats.answers["shed"], "429": stats.shed["429"], "503": stats.shed["503"],
                 "by_route": dict(stats.shed_by_route),
                 "by_reason": dict(stats.shed_by_reason.most_common()),
                 "retry_after_s": {route: {"p50": _quantile(v, 0.5), "max": max(v), "min": min(v)}
                                   for route, v in sorted(stats.retry_after_s.items())},
                 "missing_retry_after": dict(stats.missing_retry_after)},
        "errors": stats.answers["error"],
        "errors_detail": {"by_route": dict(stats.errors), "first_bodies": stats.error_bodies,
                          "applicant_failures": run.script.failures},
        "expected_refusals": dict(stats.expected),
        "answers": dict(stats.answers),
        "lost": lost,
        "lost_detail": {k: v for k, v in checks["lost"].items() if k != "lost_orders"}
        | {"orders": checks["lost"]["lost_orders"][:10], "qris_paid_not_captured": checks["qris_uncaptured"],
           "scope": "every captured payment in the payment database, and every QR paid at the acquirer simulator"},
        "by_method": {m: checks["by_method"][m] for m in ("va", "qris")},
        "acquirer_outage": checks["by_method"].get("outage"),
        "duplicates": duplicates,
        "duplicates_detail": checks["duplicates"],
        "refunds": {"applicants": sum(1 for apps in run.applicants.values() for a in apps if a.refunds),
                    "paid_out_seen_by_applicants": sum(run.script.refunded.values()), **checks["refunds"],
                    "violations": checks["refund_violations"]},
        "ceiling": ceiling,
        "machine": machine,
        "targets": targets,
        "bottleneck": bottleneck,
        "overload": overload,
        "memory": memory,
        "cpu_cores": {name: run.sampler.cpu_between(*phase["_window"]) for name, phase in run.phases.items()},
        "purchase_cpu": saturated_cpu,
        "phases": {name: public(phase) for name, phase in run.phases.items()},
        "drain_s": checks["drain_s"],
        "warmup": checks["warmup"],
        "scenarios": {phase: dict(sorted({s: sum(1 for a in apps if a.scenario == s) for s in
                                          {a.scenario for a in apps}}.items()))
                      for phase, apps in run.applicants.items()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(run.args).items()},
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_report(report: dict[str, Any]) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=110)
    table = Table(title=f"Rush: {report['buyers']} buyers in {report['duration_s']} s", show_lines=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("met", justify="center")
    t = report["targets"]
    lat = report["latency_ms"]

    def row(name: str, value: Any, key: str | None = None) -> None:
        if key is None:
            table.add_row(name, _fmt(value), "", "")
        else:
            met = t[key]["met"]
            table.add_row(name, _fmt(value), t[key]["target"], "[green]yes[/]" if met else "[red]NO[/]")

    row("orders placed / FULFILLED", f"{report['orders']:,} / {report['orders_fulfilled']:,}")
    row("stamps minted / documents stamped", f"{report['stamps_minted']:,} / {report['documents_stamped']:,}")
    row("a  purchases: credited orders/s (sustained)", report["orders_per_s"], "orders_per_s")
    sat = report["phases"]["a"].get("saturation") or {}
    row("a  saturated at", f"{sat.get('at_s')} s: {sat.get('why')}")
    win = report["phases"]["a"].get("sustained_window") or {}
    row("   sustained over; 10th-90th percentile rate",
        f"{win.get('from_s')} to {win.get('to_s')} s (from {win.get('from')}); "
        f"{_fmt(report['phases']['a'].get('orders_per_s_p10_p90'))}/s")
    row("a  payment→credited p50 / p95 (below saturation)",
        f"{_fmt(lat['payment_to_credited']['p50'])} / {_fmt(lat['payment_to_credited']['p95'])} ms")
    row("a  payment→credited p99 ms", lat["payment_to_credited"]["p99"], "p99_payment_to_credited_ms")
    ov = report["overload"]
    pc = report.get("purchase_cpu") or {}
    row("a  machine busy while saturated (cores)", pc.get("machine_busy_cores"), "machine_busy_cores")
    row("a  platform CPU per credited order (ms)", pc.get("platform_cpu_ms_per_unit"), "platform_cpu_ms_per_order")
    by_process = list((pc.get("cpu_ms_per_unit_by_process") or {}).items())[:7]
    row("   by process (ms per order)", ", ".join(f"{k} {v:.1f}" for k, v in by_process))
    dbq = pc.get("db_queries_per_order")
    if dbq:
        row("a  SQL statements per credited order",
            f"{dbq['total']} (" + ", ".join(f"{k} {v}" for k, v in dbq["by_service"].items()) + ")")
    row("a  overload: offered/s (x peak)", f"{_fmt(ov.get('offered_per_s'))} ({_fmt(ov.get('offered_over_peak'))}x)")
    row("a  overload goodput / peak (steady)", ov.get("goodput_ratio") if ov.get("goodput_ratio") is not None
        else ov.get("why", "-"), "overload_goodput_ratio")
    row("a  overload goodput / peak (first window, drain peak)", ov.get("transient_goodput_ratio"))
    row("a  overload non-2xx/429/503 answers", ov.get("errors"), "overload_errors")
    row("b  stamping: documents/s", report["documents_per_s"], "documents_per_s")
    row("b  upload→stamped p50 / p95 / p99",
        " / ".join(_fmt(lat["upload_to_stamped"][k]) for k in ("p50", "p95", "p99")) + " ms")
    row("c  mixed: orders/s · documents/s",
        f"{_fmt(report['mixed']['orders_per_s'])} · {_fmt(report['mixed']['documents_per_s'])}")
    row("shed (429 / 503)", f"{report['shed']['429']:,} / {report['shed']['503']:,}")
    for route, ra in report["shed"]["retry_after_s"].items():
        row(f"   Retry-After given, {route}", f"p50 {ra['p50']} s, max {ra['max']} s")
    row("errors (other non-2xx, transport)", report["errors"])
    methods, money = report["by_method"], report["lost_detail"].get("by_method", {})
    for method in ("va", "qris"):
        m, paid = methods[method], money.get(method, {})
        ptc_m = m["payment_to_credited"]
        row(f"{method.upper():4} orders / paid / credited (a + c)",
            f"{m['orders']:,} / {m['paid']:,} / {m['credited']:,}")
        row(f"{method.upper():4} payment→credited p50 / p99 (a + c)",
            f"{_fmt(ptc_m['p50'])} / {_fmt(ptc_m['p99'])} ms")
        row(f"{method.upper():4} captured: credited / refunded / lost",
            f"{paid.get('captured', 0):,}: {paid.get('credited', 0):,} / {paid.get('refunded', 0):,} / "
            f"{paid.get('lost', 0):,}")
    q = methods["qris"]
    row("QRIS order→QR p50 / p99", f"{_fmt(q['order_to_qr']['p50'])} / {_fmt(q['order_to_qr']['p99'])} ms")
    row("QRIS orders shed (503/429) / fell back to VA", f"{q['orders_shed']:,} / {q['fell_back_to_va']:,}")
    outage = report["acquirer_outage"]
    if outage:
        row("acquirer outage", f"{outage['seconds']} s (from {outage['from_s']} s of phase a)")
        row("   QRIS: 503 qris_unavailable / shed / fell back / QR queued",
            f"{outage['qris_answered_503_qris_unavailable']:,} / {outage['qris_orders_shed']:,} / "
            f"{outage['qris_fell_back_to_va']:,} / {outage['qris_queued_qr_late']:,}")
        d, rest = outage["va_payment_to_credited_during"], outage["va_payment_to_credited_rest_of_run"]
        row("   VA payment→credited p50/p99 during · rest",
            f"{_fmt(d['p50'])}/{_fmt(d['p99'])} (n {d['n']}) · {_fmt(rest['p50'])}/{_fmt(rest['p99'])} ms")
    row("memory: max RSS of a platform process (MB)",
        max((p["max_tree_rss_mb"] for k, p in report["memory"].get("processes", {}).items()
             if k not in ("postgresql", "rabbitmq")), default=None), "memory_bounded")
    row("ceiling: raw commits/s · confirms/s",
        f"{_fmt(report['ceiling'].get('db_commits_per_s'))} · {_fmt(report['ceiling'].get('broker_confirms_per_s'))}")
    refunds = report["refunds"]
    row("refunds of unused stamps: paid out / applicants refunding",
        f"{refunds['by_status'].get('PAID_OUT', 0):,} / {refunds['applicants']:,}")
    row("LOST (captured, neither credited nor refunded)", report["lost"], "lost")
    row("DUPLICATES (serials issued or used twice)", report["duplicates"], "duplicates")
    console.print(table)
    for name, b in report["bottleneck"].items():
        console.print(f"[bold]bottleneck ({name}):[/] {b['tier']}: {b['why']}")
        if b.get("cores_best_to_last"):
            console.print(f"   {b['cores_best_to_last']}")
    if report["errors_detail"]["first_bodies"]:
        console.print("first errors:")
        for e in report["errors_detail"]["first_bodies"][:5]:
            console.print(f"  {e['route']} {e['status']}: {e['body'][:200]}", markup=False)
    m = report["machine"]
    console.print(f"machine: {m.get('nproc')} cpu, load average {m.get('loadavg_1m', {}).get('start')} → "
                  f"{m.get('loadavg_1m', {}).get('end')}", markup=False)
    verdict = "[bold green]lost = 0, duplicates = 0[/]" if report["lost"] == 0 and report["duplicates"] == 0 \
        else f"[bold red]INVARIANT BROKEN: lost = {report['lost']}, duplicates = {report['duplicates']}[/]"
    console.print(verdict)


# --- main ------------------------------------------------------------------------------------

def prioritize(nice: int) -> dict[str, Any]:
    """Run the load generator (this process; threads it starts later inherit it) at ``nice``, after
    the platform's processes were started at the usual priority. Without it, in a long overload the
    generator got about one core's share in seven: its 2-s arrival steps stretched to 2.5 s and came
    in bursts (1 to 628 applicants a step at a nominal 683), and its applicants polled and paid late.
    Lowering the value needs the privilege to (root, or CAP_SYS_NICE); without it the run goes on as
    started and the report says so."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if not nice or nice == before:
        return {"nice": before, "asked": nice}
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        err.print(f"load generator: cannot run at nice {nice} ({exc}); it shares the cores as started")
        return {"nice": before, "asked": nice, "error": repr(exc)}
    return {"nice": os.getpriority(os.PRIO_PROCESS, 0), "asked": nice}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    rng = random.Random(args.seed)
    random.seed(args.seed)
    n_c = args.buyers // 3
    split = {"ab": args.buyers - n_c, "c": n_c}
    platform = RushPlatform(stock_min=4 * args.buyers + 1_000, log=err.print)
    settings = platform.settings
    started = time.monotonic()
    infra = aiohttp.ClientSession()
    stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    live: set[asyncio.Task[None]] = set()
    dbs: Databases | None = None
    session: aiohttp.ClientSession | None = None
    try:
        await platform.up(infra)
        generator_nice = prioritize(args.generator_nice)
        acquirer = platform.acquirer
        assert acquirer is not None
        if args.qris_share > 0 and acquirer.url is None:
            raise RuntimeError(f"--qris-share {args.qris_share} needs a QRIS acquirer simulator: {acquirer.why_none} "
                               "(run with --qris-share 0, or let the rush start the platform)")
        if args.acquirer_outage_s > 0 and not acquirer.can_stop:
            raise RuntimeError("--acquirer-outage-s needs the rush's own acquirer simulator: stop `make run` and "
                               "let the rush start the platform")
        if args.no_ceiling:
            ceiling: dict[str, Any] = {"db_commits_per_s": None, "broker_confirms_per_s": None, "skipped": True}
        else:
            err.print("ceiling: raw commits and confirms on a scratch database and vhost ...")
            try:
                ceiling = await measure_ceiling(settings["order"].pg_base_url)
            except Exception as exc:  # e.g. PostgreSQL out of connection slots: report it, go on
                ceiling = {"db_commits_per_s": None, "broker_confirms_per_s": None, "error": repr(exc)}
        dbs = await Databases.open({name: s.database_url for name, s in settings.items()},
                                   amqp_url=settings["order"].amqp_url, queues=invariants.consumer_queues())
        bank_config = dev_bank(args.bank_dir)
        docs = await asyncio.to_thread(documents)
        connector = aiohttp.TCPConnector(limit=args.connections, limit_per_host=args.connections_per_host)
        session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))
        stats = Stats()
        urls = {name: platform.api_url(name) for name in settings}
        client = Client(session, urls, stats=stats, deadline=time.monotonic() + 3 * args.phase_timeout_s + 600)
        bank = Bank(client, bank_config.simulator(urls["payment"], session))
        sms_file = Path(settings["order"].dev_sms_file)  # type: ignore[attr-defined]
        acquirer_stats = Stats()
        payer = Client(session, {"acquirer": acquirer.url or "http://127.0.0.1:9"}, stats=acquirer_stats,
                       deadline=client.deadline, transport_retries=None)
        script = Script(client, bank, docs, args.poll_rate, inbox=SmsInbox(sms_file if sms_file.is_absolute()
                                                                            else REPO / sms_file),
                        run_id=rng.randrange(10_000), acquirer=payer, qris_fallback_after=args.qris_fallback_after)
        sampler = ProcessSampler(platform.ports())
        scraper = MetricsScraper(platform.metrics_urls())
        background += [asyncio.create_task(sampler.run(stop)), asyncio.create_task(scraper.run(infra, stop))]
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err)
        r = Run(args, platform, dbs, script, stats, progress, sampler, scraper, live, acquirer, acquirer_stats)
        kinds_a = scenarios(split["ab"], args, rng)
        kinds_c = scenarios(split["c"], args, rng)
        r.applicants["a"] = [Applicant(i, "a", kinds_a[i], signs_in=rng.random() < args.signin_share)
                             for i in range(split["ab"])]
        r.applicants["c"] = [Applicant(i, "c", kinds_c[i], signs_in=rng.random() < args.signin_share)
                             for i in range(split["c"])]
        for apps in r.applicants.values():
            for a in rng.sample(apps, round(len(apps) * args.refund_share)):
                a.refunds = True
            for a in rng.sample(apps, round(len(apps) * args.qris_share)):
                a.method, a.wanted_qris = "qris", True
        with progress:
            await bank.token()
            r.origin = await r.clock()
            warmup = await warm_up(r)
            r.phases["a"] = await phase_purchase(r, r.applicants["a"])
            if r.outage is not None:
                await r.outage  # the acquirer is back before phase b
            r.phases["b"] = await phase_stamping(r, r.applicants["a"])
            rate_c = max(args.start_rate, r.phases["a"]["orders_per_s"] or args.start_rate)
            r.phases["c"] = await phase_mixed(r, r.applicants["c"], rate_c)
            checked = await drain(r)
        all_orders = [a.order_id for apps in r.applicants.values() for a in apps if a.order_id]
        checks = {"warmup": warmup, "lost": checked["lost"], "duplicates": checked["duplicates"],
                  "qris_uncaptured": checked["qris_uncaptured"], "by_method": await method_figures(r),
                  "drain_s": checked["seconds"], "stamps_minted": await dbs.serials_issued(all_orders),
                  "refunds": checked["refunds"], "refund_violations": checked["refund_violations"]}
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        try:
            machine = await machine_info(settings["order"], load_at_start)
        except Exception as exc:  # the report matters more than the server versions
            machine = {"nproc": os.cpu_count(), "error": repr(exc),
                       "loadavg_1m": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)}}
        machine["load_generator_priority"] = generator_nice
        return build_report(r, buyers=args.buyers, split=split, ceiling=ceiling, machine=machine,
                            duration_s=time.monotonic() - started, checks=checks)
    finally:
        stop.set()
        for task in [*background, *live]:
            task.cancel()
        await asyncio.gather(*background, *live, return_exceptions=True)
        if platform.acquirer is not None:
            with contextlib.suppress(Exception):
                await platform.acquirer.stop()
        if session is not None:
            await session.close()
        await infra.close()
        if dbs is not None:
            await dbs.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(platform.down)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.buyers < 3:
        print("--buyers must be at least 3", file=sys.stderr)
        return 2
    with benchmark_broker(SCRATCH_VHOST):
        report = uvloop.run(run(args))
    print_report(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"written to {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 1 if report["lost"] or report["duplicates"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
