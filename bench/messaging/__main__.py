"""``python -m bench.messaging``: run every measurement, print a table, write the JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from emeterai_testkit.fixtures import (
    reset_service,
    settings_for,
)
from emeterai_testkit.probe import SERVICE, ProbeSettings

from bench.common import benchmark_broker, fresh_vhost, machine_info, rate_record
from bench.messaging.pipeline import PipelineRate, run_pipeline
from bench.messaging.raw import commit_ceiling, confirm_ceiling

VHOST = "emeterai_bench"
DATABASE = "emeterai_bench_probe"
TARGET_RATIO = 0.5
COMMIT_CONNECTIONS = 8
RESULTS = Path(__file__).resolve().parents[1] / "results" / "messaging.json"
REPORTED_SETTINGS = ("prefetch", "consumer_concurrency", "consumer_batch_max", "relay_batch_size",
                     "db_pool_max", "relay_poll_interval_s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.messaging", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="preloaded pipeline messages")
    parser.add_argument("--live-messages", type=int, default=None,
                        help="messages the live producers commit (default: half of --messages)")
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--commits", type=int, default=4_000, help="raw single-row commits")
    parser.add_argument("--confirms", type=int, default=10_000, help="raw confirmed publishes")
    parser.add_argument("--in-flight", type=int, default=500, help="raw publishes in flight")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a probe setting for relay and worker (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)





def _pipeline(rate: PipelineRate, ceiling: float) -> dict[str, Any]:
    return {"wall": rate_record(rate.wall), "steady": rate_record(rate.steady),
            "ratio": round(rate.wall.per_s / ceiling, 3),
            "steady_ratio": round(rate.steady.per_s / ceiling, 3),
            "cpu_ms_per_message": rate.cpu_ms}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    overrides = dict(item.split("=", 1) for item in args.overrides)
    settings = settings_for(ProbeSettings, database_name=DATABASE, amqp_url=fresh_vhost(VHOST),
                            log_level="WARNING", **overrides)
    await reset_service(SERVICE, settings)
    commits = await commit_ceiling(settings.database_url, total=args.commits,
                                   connections=COMMIT_CONNECTIONS)
    confirms = await confirm_ceiling(settings.amqp_url, total=args.confirms, in_flight=args.in_flight)
    live_messages = args.live_messages if args.live_messages is not None else args.messages // 2
    pipeline = await run_pipeline(settings, messages=args.messages, live_messages=live_messages,
                                  producers=args.producers)
    ceiling = min(commits.per_s, confirms.per_s)
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages": args.messages,
        "live_messages": pipeline.live.wall.count,
        "producers": args.producers,
        "raw": {"commits": {**rate_record(commits), "connections": COMMIT_CONNECTIONS},
                "confirms": {**rate_record(confirms), "in_flight": args.in_flight}},
        "ceiling_per_s": round(ceiling, 1),
        "pipeline": {"preloaded": _pipeline(pipeline.preloaded, ceiling),
                     "live": {**_pipeline(pipeline.live, ceiling),
                              "producers_commits": rate_record(pipeline.live_producers)},
                     "duplicates": pipeline.duplicates},
        "target_ratio": TARGET_RATIO,
        "settings": {name: getattr(settings, name) for name in REPORTED_SETTINGS},
        "machine": await machine_info(settings, load_at_start),
    }


def print_table(report: dict[str, Any]) -> None:
    raw, pipe = report["raw"], report["pipeline"]
    rows: list[tuple[str, dict[str, Any], str]] = [
        (f"raw commits (asyncpg, 1 INSERT/tx, {raw['commits']['connections']} conns)", raw["commits"], ""),
        (f"raw confirms (aio-pika, {raw['confirms']['in_flight']} in flight)", raw["confirms"], ""),
        ("pipeline preloaded, from process start", pipe["preloaded"]["wall"],
         f"{pipe['preloaded']['ratio']:.2f}"),
        ("pipeline preloaded, first→last effect", pipe["preloaded"]["steady"],
         f"{pipe['preloaded']['steady_ratio']:.2f}"),
        (f"pipeline live ({report['producers']} producers), to last effect", pipe["live"]["wall"],
         f"{pipe['live']['ratio']:.2f}"),
        ("pipeline live, first→last effect", pipe["live"]["steady"], f"{pipe['live']['steady_ratio']:.2f}"),
        ("  live producers' own commits", pipe["live"]["producers_commits"], ""),
    ]
    print(f"\n{'measure':<52}{'count':>8}{'seconds':>9}{'per s':>9}{'ratio':>7}")
    for name, rate, ratio in rows:
        print(f"{name:<52}{rate['count']:>8}{rate['seconds']:>9.2f}{rate['per_s']:>9.0f}{ratio:>7}")
    cpu = {phase: pipe[phase]["cpu_ms_per_message"] for phase in ("preloaded", "live")}
    labels = list(cpu["preloaded"])
    print(f"\n{'CPU ms per message':<20}" + "".join(f"{label:>12}" for label in labels))
    for phase, figures in cpu.items():
        print(f"{phase:<20}" + "".join(f"{figures[label]:>12.3f}" for label in labels))
    machine, s = report["machine"], report["settings"]
    print(f"\nratio = pipeline rate / min(commits/s, confirms/s) = / {report['ceiling_per_s']:.0f}"
          f"  (target ≥ {report['target_ratio']}); duplicates applied: {pipe['duplicates']}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    print(f"machine: {machine['nproc']} cpu, Python {machine['python']}, PostgreSQL {machine['postgresql']}"
          f" (synchronous_commit={machine['postgresql_synchronous_commit']}), RabbitMQ {machine['rabbitmq']}, "
          f"load average {machine['loadavg_1m']['start']} → {machine['loadavg_1m']['end']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with benchmark_broker(VHOST):
        report = uvloop.run(run(args))
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    below = [k for k in ("preloaded", "live") if report["pipeline"][k]["ratio"] < TARGET_RATIO]
    if below:
        print(f"below target ratio: {', '.join(below)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
