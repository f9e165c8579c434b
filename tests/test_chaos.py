"""Fault injection during a small rush: the test-suite version of ``make chaos`` (same code:
``emeterai_testkit.chaos``).

20 applicants register, buy 2 stamps, are paid by the bank simulator (some callbacks duplicated)
and stamp 2 PDFs each, through real processes of the four services, while one worker of every
service is SIGKILLed and restarted, RabbitMQ is stopped and started, PostgreSQL is stopped and
started, and the stamping worker SIGKILLs itself between a signature and its commit. After
recovery and quiescence, from the databases and the broker: every captured payment is credited
or refunded, every accepted stamping is DONE or FAILED with its serial released, no serial is
issued, sold or used twice, nothing is parked without a reason, no outbox row is parked, no
captured payment is stranded behind a parked message (it would count as lost), and the front doors
answered every fault with 503 + Retry-After, never another 5xx (each an invariant: ``report["ok"]``).

Restarting RabbitMQ and PostgreSQL happens under ``broker_exclusive`` (the lock every test
session holds shared), so concurrent sessions on this machine never see a server vanish; both
servers are running again afterwards. Retry tiers are shortened (1 s, 3 s, 10 s) to fit a test,
still longer in total than the outages. Nothing here asserts on elapsed time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from emeterai_testkit import chaos
from emeterai_testkit.fixtures import NAMESPACE

SMALL = {
    "applicants": 20,
    "arrival_s": 24.0,
    "broker_down_s": 3.0,
    "postgres_down_s": 3.0,
    "duplicate_share": 0.3,
    "retry_delays_ms": [1_000, 3_000, 10_000],
    "applicant_timeout_s": 240.0,
    "quiesce_timeout_s": 180.0,
    "failpoint_wait_s": 20.0,
}


@pytest.mark.timeout(1200)  # mostly for waiting on the exclusive lock while other sessions run
async def test_a_small_rush_survives_worker_kills_and_broker_and_database_restarts(
    servers: str, broker_exclusive: None, tmp_path: Path
) -> None:
    cfg = chaos.ChaosConfig(namespace=NAMESPACE, **SMALL)  # type: ignore[arg-type]
    try:
        report = await chaos.run(cfg, tmp_path, amqp_url=servers, log=print)
    finally:
        chaos.ensure_servers_running()
    text = chaos.format_report(report)
    print(text)
    assert [i["kind"] for i in report["injections"]] == [kind for _, kind in cfg.schedule], text
    assert all(i["ok"] for i in report["injections"]), text
    assert report["counts"]["payments_captured"] > 0 and report["counts"]["stampings"], text
    assert report["ok"], text
