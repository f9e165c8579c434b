"""``python -m bench.cluster_rush`` (``make rush-cluster``): the cost of replication, measured in one run
on this machine: the same small purchase rush against a single RabbitMQ node of the run's own and
against a three-node cluster of the run's own (``emeterai_testkit.cluster``: the very same node
settings, one Erlang scheduler each; quorum queues with one member, then three), one after the other,
with the same platform settings. ``--machine-broker`` adds the machine's own broker (shared with
everyone on the machine, all schedulers) as a third row, for reference only.

Both run at once; first the raw confirm ceiling (confirmed, persistent publishes/s into a quorum queue,
as ``bench.messaging``), ``--rounds`` rounds alternating between the two (the median reported, each
round's figure kept), then, for each, ``--buyers`` applicants (default 150, at most 300) arriving over
``--arrival-s``, each registering, ordering 2 stamps and paid by the bank simulator (no uploads: the
path measured is the messaging one), through the four services as real processes (the chaos kit's load,
no faults). Figures from the databases: payment captured -> order FULFILLED (p50, p95, max), and
credited orders per second (10th to 90th percentile of their FULFILLED times). The invariants of
``make chaos`` are checked too. Writes ``bench/results/cluster-rush.json``.

One small run on a shared machine: a comparison, not a capacity figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from emeterai_testkit import chaos, invariants
from emeterai_testkit.cluster import Cluster, running_cluster
from emeterai_testkit.fixtures import claimed_vhost, shared_broker_lock

from bench.messaging.raw import confirm_ceiling

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "cluster-rush.json"
WORKDIR = REPO / "var" / "cluster-rush"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_rush", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buyers", type=int, default=int(os.environ.get("BUYERS", "150")))
    parser.add_argument("--arrival-s", type=float, default=None, help="default: buyers / 10 (10 arrivals/s)")
    parser.add_argument("--confirms", type=int, default=20000, help="publishes per round of the raw confirm ceiling")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the confirm ceiling, alternating")
    parser.add_argument("--machine-broker", action="store_true",
                        help="also the machine's own broker (shared with everyone here), for reference")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 3 <= args.buyers <= 300:
        parser.error("--buyers: 3 to 300 (a shared machine)")
    return args


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def figures(platform: Any) -> dict[str, Any]:
    """Payment captured -> order FULFILLED latencies and credited orders/s, from the databases."""
    async with invariants.pools_of({svc: s.database_url for svc, s in platform.settings.items()}) as pools:
        fulfilled = {r["id"]: r["at"] for r in await pools["order"].fetch(
            "SELECT order_id::text AS id, min(at) AS at FROM order_history WHERE new_status = 'FULFILLED'"
            " GROUP BY order_id")}
        captured = {r["id"]: r["captured_at"] for r in await pools["payment"].fetch(
            "SELECT order_id::text AS id, captured_at FROM payments WHERE captured_at IS NOT NULL")}
    latencies = [(fulfilled[o] - captured[o]).total_seconds() for o in fulfilled if o in captured]
    times = sorted(fulfilled.values())
    rate = None
    if len(times) >= 10:
        lo, hi = times[len(times) // 10], times[(9 * len(times)) // 10]
        span = (hi - lo).total_seconds()
        rate = round((9 * len(times) // 10 - len(times) // 10) / span, 1) if span > 0 else None
    return {"credited": len(fulfilled), "payment_to_credited_s": {
        "p50": _quantile(latencies, 0.5), "p95": _quantile(latencies, 0.95), "max": _quantile(latencies, 1.0)},
        "credited_per_s": rate}


async def confirm_rounds(urls: dict[str, str], args: argparse.Namespace) -> dict[str, list[float]]:
    """Confirmed publishes/s into a quorum queue, ``--rounds`` rounds alternating between the brokers."""
    rates: dict[str, list[float]] = {label: [] for label in urls}
    for n in range(args.rounds):
        for label, url in urls.items():
            rate = await confirm_ceiling(url.split(",")[0], total=args.confirms, in_flight=200)
            rates[label].append(round(rate.per_s, 1))
            print(f"--- confirm ceiling round {n + 1}: {label} {rate.per_s:.0f}/s", flush=True)
    return rates


async def one(label: str, amqp_url: str, args: argparse.Namespace, cluster: Cluster | None) -> dict[str, Any]:
    cfg = chaos.ChaosConfig(namespace=f"rushcmp_{label}", applicants=args.buyers,
                            arrival_s=args.arrival_s or args.buyers / 10, schedule=(), documents_per_applicant=0,
                            duplicate_share=0.0, poll_interval_s=0.5)
    workdir = WORKDIR / label
    shutil.rmtree(workdir, ignore_errors=True)
    depths = None
    if cluster is not None:
        the_cluster = cluster

        async def cluster_depths(vhost: str) -> dict[str, int]:
            return await asyncio.to_thread(the_cluster.queue_depths, vhost)

        depths = cluster_depths
    async with chaos.chaos_platform(cfg, workdir, amqp_url=amqp_url, log=print) as platform:
        tl = chaos.Timeline(lambda m: print(m, flush=True))
        load = chaos.Load(platform, cfg, tl)
        tl.note(f"{label}: {cfg.applicants} applicants arriving over {cfg.arrival_s:.0f}s")
        started = time.monotonic()
        await load.run()
        quiescence = await chaos.wait_quiescent(platform, cfg.vhost, tl, cfg.quiesce_timeout_s, depths=depths)
        elapsed = time.monotonic() - started
        data = await chaos.collect(platform, cfg.vhost, depths)
        acknowledged = {a.payment_request_id for a in load.applicants if a.bank_acknowledged and a.payment_request_id}
        checks = chaos.evaluate(data, acknowledged, quiescence)
        found = await figures(platform)
    violated = [c.name for c in checks if c.kind == "invariant" and not c.ok]
    return {"broker": label, "load_s": round(elapsed, 1),
            "stages": {k: sum(1 for a in load.applicants if a.stage == k) for k in {a.stage for a in load.applicants}},
            **found, "invariants_violated": violated}


async def compare(args: argparse.Namespace, brokers: dict[str, tuple[str, Cluster | None]]) -> list[dict[str, Any]]:
    rates = await confirm_rounds({label: url for label, (url, _) in brokers.items()}, args)
    rows = []
    for label, (url, cluster) in brokers.items():
        row = await one(label, url, args, cluster)
        rows.append({"broker": label, "confirms_per_s": statistics.median(rates[label]),
                     "confirm_rounds": rates[label], **row})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'broker':<8} {'confirms/s':>10} {'credited/s':>10} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
          f"{'credited':>8}  invariants")
    for r in rows:
        lat = r["payment_to_credited_s"]
        print(f"{r['broker']:<8} {r['confirms_per_s']:>10} {r['credited_per_s'] or '-':>10} {lat['p50']:>7} "
              f"{lat['p95']:>7} {lat['max']:>7} {r['credited']:>8}  "
              + ("ok" if not r["invariants_violated"] else f"VIOLATED: {r['invariants_violated']}"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        stack.enter_context(shared_broker_lock())
        single = stack.enter_context(running_cluster(REPO / "var" / "cluster-rush-single", prefix="emqs", size=1))
        three = stack.enter_context(running_cluster(REPO / "var" / "cluster-rush-cluster", prefix="emqr"))
        brokers: dict[str, tuple[str, Cluster | None]] = {
            "single": (",".join(single.ensure_vhost("emeterai_rushcmp_single")), single),
            "cluster": (",".join(three.ensure_vhost("emeterai_rushcmp_cluster")), three)}
        if args.machine_broker:
            brokers["machine"] = (stack.enter_context(claimed_vhost("emeterai_rushcmp_machine")), None)
        rows = asyncio.run(compare(args, brokers))
    print_table(rows)
    report = {"buyers": args.buyers, "rows": rows, "machine": {"nproc": os.cpu_count(), "loadavg": os.getloadavg()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"written {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 1 if any(r["invariants_violated"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
