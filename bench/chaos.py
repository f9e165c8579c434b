"""``python -m bench.chaos`` (``make chaos``): a rush of applicants while RabbitMQ, PostgreSQL and the
workers fail, then the invariants checked from the databases and the broker.

On its own namespace (databases ``emeterai_chaos_bench_<svc>``, vhost ``emeterai_chaos_bench``;
``make run``'s data is never touched) the four services' api, worker and relay run as real
processes. ``CHAOS_BUYERS`` applicants (default 200) each register, buy 2 stamps, are paid by the
bank simulator (a share of callbacks duplicated) and stamp 2 PDFs. During the load, with a printed
timeline: one worker of every service SIGKILLed and restarted, RabbitMQ ``stop_app``/``start_app``,
PostgreSQL stopped and started, the stamping worker SIGKILLed between a signature and its commit
(failpoint ``stamping.after_sign=kill``). After quiescence: every captured payment credited or
refunded (one whose only pending step is a parked message counts as lost, naming the message), every
accepted stamping DONE or FAILED with its serial released, no serial issued, sold or used twice,
nothing parked without a reason, no parked outbox row, and the front doors answered every fault with
503 + Retry-After (SNAP: ``504xx00`` Timeout), never another 5xx. The logic is
``emeterai_testkit.chaos`` (``tests/test_chaos.py`` runs a smaller version of it).

Restarting the servers disturbs everyone on this machine: the run first waits while other
sessions' benchmarks or tests run, then takes the exclusive broker lock (which every test session
and benchmark holds shared), and leaves PostgreSQL and RabbitMQ running. Writes
``bench/results/chaos.json``; exits 1 on any violated invariant.

``--cluster`` (``make chaos CLUSTER=1``): the services use a three-node RabbitMQ cluster of the run's
own (``emeterai_testkit.cluster``, in ``var/cluster-chaos``; ``EMETERAI_AMQP_URLS`` = its nodes) and
the faults are the cluster's: the node most clients use SIGKILLed and started again, then cut off by
a network partition (network namespaces; a paused VM where there are none), then a rolling restart
of the three nodes; quorum queues healthy again after each. The run goes in segments, one per fault
(``chaos.segment_plan``: the applicants and the arrival window divided between them), and the
invariants are checked after each fault, before the next segment starts. The machine's broker is not
touched (no exclusive lock needed). Writes ``bench/results/chaos-cluster.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from emeterai_testkit import chaos
from emeterai_testkit.fixtures import claimed_vhost, shared_broker_lock

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "chaos.json"
WORKDIR = REPO / "var" / "chaos"
OTHERS = r"bench\.(rush|stamping|messaging|callbacks|minting)|pytest"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buyers", type=int, default=int(os.environ.get("CHAOS_BUYERS", "200")),
                        help="applicants (env CHAOS_BUYERS, default 200)")
    parser.add_argument("--arrival-s", type=float, default=None,
                        help="applicants arrive over this window, the faults fall in it (default 0.3 s per buyer, "
                             "at least 40)")
    parser.add_argument("--broker-down-s", type=float, default=5.0)
    parser.add_argument("--postgres-down-s", type=float, default=5.0)
    parser.add_argument("--no-stamping-kill", action="store_true", help="skip the failpoint kill while signing")
    parser.add_argument("--only", choices=sorted(chaos.INJECTIONS), action="append", default=[],
                        help="inject only these faults (repeatable; default all)")
    parser.add_argument("--namespace", default="chaos_bench")
    parser.add_argument("--wait-s", type=float, default=900,
                        help="longest wait for other sessions' benchmarks and tests, then for the lock")
    parser.add_argument("--output", type=Path, default=None, help="default bench/results/chaos[-cluster].json")
    parser.add_argument("--cluster", action="store_true", default=os.environ.get("CLUSTER", "") not in ("", "0"),
                        help="on a three-node RabbitMQ cluster of its own, with the cluster's faults (env CLUSTER=1)")
    parser.add_argument("--partition-s", type=float, default=25.0)
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS.with_name("chaos-cluster.json") if args.cluster else RESULTS
    return args


def others_running() -> list[str]:
    """Other sessions' benchmarks and test runs (a server restart would disturb them)."""
    done = subprocess.run(["pgrep", "-af", OTHERS], capture_output=True, text=True, check=False)
    ours = {os.getpid(), os.getppid()}
    return [line for line in done.stdout.splitlines()
            if line.split()[0].isdigit() and int(line.split()[0]) not in ours]


def wait_for_others(wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while (found := others_running()) and time.monotonic() < deadline:
        print(f"waiting (every 30 s, up to {wait_s:.0f} s) for other sessions to finish: "
              + "; ".join(line[:100] for line in found[:4]), flush=True)
        time.sleep(30)
    if found:
        print("still running after the wait, going on under the exclusive lock: " + "; ".join(found[:4]), flush=True)


def config(args: argparse.Namespace) -> chaos.ChaosConfig:
    cfg = chaos.ChaosConfig(namespace=args.namespace + ("_cluster" if args.cluster else ""), applicants=args.buyers,
                            arrival_s=args.arrival_s or (max(150.0, 0.5 * args.buyers) if args.cluster
                                                         else max(40.0, 0.3 * args.buyers)),
                            broker_down_s=args.broker_down_s, postgres_down_s=args.postgres_down_s)
    if args.cluster:
        cfg.schedule = chaos.CLUSTER_SCHEDULE
        cfg.partition_s = args.partition_s
        cfg.amqp_heartbeat_s = 5
        cfg.recovery_timeout_s = 240.0
    schedule = [(at, kind) for at, kind in cfg.schedule if not args.only or kind in args.only]
    if args.no_stamping_kill:
        schedule = [(at, kind) for at, kind in schedule if kind != chaos.STAMPING_KILL_AFTER_SIGN]
    cfg.schedule = tuple(schedule)
    return cfg


def run_on_cluster(cfg: chaos.ChaosConfig) -> dict[str, Any]:
    from emeterai_testkit.cluster import running_cluster

    with shared_broker_lock(), running_cluster(REPO / "var" / "cluster-chaos", prefix="emqc") as cluster:
        cluster.ensure_vhost(cfg.vhost)
        return asyncio.run(chaos.run(cfg, WORKDIR, log=lambda m: print(m, flush=True), cluster=cluster))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config(args)
    chaos.require_tools()
    if args.cluster:
        shutil.rmtree(WORKDIR, ignore_errors=True)
        report = run_on_cluster(cfg)
        return finish(report, args)
    restarts = {chaos.RABBITMQ_RESTART, chaos.POSTGRESQL_RESTART} & {kind for _, kind in cfg.schedule}
    if restarts:
        wait_for_others(args.wait_s)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    # only server restarts need the exclusive lock; worker kills disturb nobody else
    lock = chaos.exclusive_servers(wait_s=args.wait_s) if restarts else shared_broker_lock()
    with lock, claimed_vhost(cfg.vhost) as amqp_url:
        report = asyncio.run(chaos.run(cfg, WORKDIR, amqp_url=amqp_url, log=lambda m: print(m, flush=True)))
    return finish(report, args)


def finish(report: dict[str, Any], args: argparse.Namespace) -> int:
    report["machine"] = {"nproc": os.cpu_count()}
    print(chaos.format_report(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"written {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
