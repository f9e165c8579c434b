"""The distributed path on a three-node RabbitMQ cluster of the session's own (``rabbit_cluster``:
``emeterai_testkit.cluster``; the machine's broker is not touched).

- a connection given the three nodes' addresses moves to another node when the node it uses is
  SIGKILLed, and its publisher confirms and consumers go on there; quorum queues get a leader again;
- the suite's smaller version of ``make chaos CLUSTER=1``: a small rush on the four services (api,
  worker and relay as real processes, ``EMETERAI_AMQP_URLS`` = the three nodes) while the node most
  clients use is SIGKILLed and started again, then cut off by a network partition (or, on a machine
  without network namespaces, paused), then the three nodes restarted one by one. The run goes in
  segments, one per fault, each with its own applicants (the 20 divided between them): after each
  fault every quorum queue has a leader and three members online again and, once its segment is
  quiescent, every captured payment is credited or refunded, no serial twice, nothing lost or
  applied twice (the chaos invariants, checked after each fault). Nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from emeterai_shared.messaging import connect
from emeterai_shared.messaging.connection import FailoverConnection
from emeterai_testkit import chaos
from emeterai_testkit.fixtures import NAMESPACE, eventually

SMALL = {
    "applicants": 20,
    "arrival_s": 100.0,
    "duplicate_share": 0.3,
    "retry_delays_ms": [1_000, 3_000, 10_000],
    "applicant_timeout_s": 400.0,
    "quiesce_timeout_s": 240.0,
    "cluster_down_s": 3.0,
    "partition_s": 25.0,
    "amqp_heartbeat_s": 5,
    "recovery_timeout_s": 240.0,
}


@pytest.mark.timeout(600)
async def test_a_connection_to_the_cluster_moves_to_another_node_when_its_node_is_killed(rabbit_cluster: Any) -> None:
    vhost = f"emeterai_{NAMESPACE}_failover"
    urls = await asyncio.to_thread(rabbit_cluster.ensure_vhost, vhost)
    conn = await connect(urls, name="failover-test", heartbeat=5)
    node = None
    try:
        assert isinstance(conn, FailoverConnection)
        first = conn.address
        channel = await conn.channel()  # publisher confirms on
        queue = await channel.declare_queue("failover", durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(aio_pika.Message(b"before", delivery_mode=2), routing_key="failover")
        node = next(n for n in rabbit_cluster.nodes if f"{n.ip}:{n.amqp_port}" in first)
        assert await asyncio.to_thread(rabbit_cluster.kill_node, node) is not None

        async def published_again() -> bool:
            try:
                await channel.default_exchange.publish(aio_pika.Message(b"after", delivery_mode=2),
                                                       routing_key="failover", timeout=5)
                return True
            except Exception:
                return False

        await eventually(published_again, timeout_s=120, interval_s=1, message="a confirmed publish after the kill")
        assert conn.address != first

        got: list[bytes] = []

        async def both_consumed() -> bool:
            message = await queue.get(fail=False, timeout=5)
            if message is not None:
                got.append(message.body)
                await message.ack()
            return {b"before", b"after"} <= set(got)

        await eventually(both_consumed, timeout_s=60, interval_s=0.5, message="both messages from the quorum queue")
        assert got.count(b"before") == 1, got
    finally:
        await conn.close()
        if node is not None:
            await asyncio.to_thread(rabbit_cluster.restart_node, node)
    healthy, reported = await asyncio.to_thread(rabbit_cluster.wait_healthy, vhost, 240)
    assert healthy, reported


@pytest.mark.timeout(1500)
async def test_a_small_rush_survives_a_node_kill_a_partition_and_a_rolling_restart(
    servers: str, rabbit_cluster: Any, tmp_path: Path
) -> None:
    cfg = chaos.ChaosConfig(namespace=f"{NAMESPACE}_cluster", schedule=chaos.CLUSTER_SCHEDULE,
                            **SMALL)  # type: ignore[arg-type]
    await asyncio.to_thread(rabbit_cluster.ensure_vhost, cfg.vhost)
    report = await chaos.run(cfg, tmp_path, log=print, cluster=rabbit_cluster)
    text = chaos.format_report(report)
    print(text)
    assert [i["kind"] for i in report["injections"]] == list(chaos.CLUSTER_INJECTIONS), text
    assert all(i["ok"] for i in report["injections"]), text
    # one segment per fault, in order, each with its own load and its own passing invariant checks
    segments = report["segments"]
    assert [s["fault"] for s in segments] == list(chaos.CLUSTER_INJECTIONS), text
    assert report["segments_skipped"] == [], text
    assert sum(s["applicants"] for s in segments) == cfg.applicants, text
    assert [s["first_applicant"] for s in segments] == [0, *(sum(x["applicants"] for x in segments[:k])
                                                              for k in range(1, len(segments)))], text
    invariant_names = None
    for s in segments:
        assert s["injection"] is not None and s["injection"]["kind"] == s["fault"] and s["injection"]["ok"], text
        assert s["load"]["applicants"] == s["applicants"] > 0, text
        assert s["quiescence"]["reached"], text
        names = {c["name"] for c in s["checks"] if c["kind"] == "invariant"}
        assert "every captured payment credited or refunded" in names, text
        assert invariant_names is None or names == invariant_names, text  # the same invariants after every fault
        invariant_names = names
        assert s["violations"] == 0 and all(c["ok"] for c in s["checks"] if c["kind"] == "invariant"), text
        assert s["counts"]["payments_captured"] > 0, text
    # each check sees the state so far: captures only grow from one segment to the next
    captured = [s["counts"]["payments_captured"] for s in segments]
    assert captured == sorted(captured), text
    assert report["counts"]["payments_captured"] > 0, text
    assert report["violations"] == 0, text
    assert report["ok"], text
