"""A minting worker SIGKILLed between commit and ack, then restarted, as real processes.

The first worker dies (``consumer.after_commit=kill``) right after committing its first batch,
before acking it; the broker redelivers that batch to the second worker, whose inbox absorbs it.
In the end every order has exactly its serials and exactly one announcement.
"""

from __future__ import annotations

import asyncio
import re
import signal
from typing import TYPE_CHECKING

from emeterai_testkit.fixtures import eventually

if TYPE_CHECKING:
    from conftest import Minting

ORDERS = 60


async def duplicates_absorbed(minting: Minting, port: int) -> float:
    async with minting.http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    found = re.search(r'emeterai_messages_consumed_total\{outcome="duplicate",queue="minting.on_order_paid"\} '
                      r"([0-9.e+]+)", text)
    return float(found.group(1)) if found else 0.0


async def test_sigkill_after_commit_then_restart_issues_each_order_once(minting: Minting) -> None:
    orders = [minting.order(q) for q in [1, 2, 3] * (ORDERS // 3)]
    await asyncio.gather(*(minting.publish(o) for o in orders))
    settings = minting.settings.model_copy(update={"consumer_batch_max": 8})
    ids = [o.order_id for o in orders]
    issued = "SELECT count(*) FROM issuances WHERE order_id = ANY($1)"

    crashing = minting.worker_process(settings, failpoints="consumer.after_commit=kill")
    try:
        assert await asyncio.to_thread(crashing.wait) == -signal.SIGKILL, "".join(crashing.lines)
    finally:
        crashing.kill()
    assert await minting.pool.fetchval(issued, ids) >= 1  # its batch committed, unacknowledged

    restarted = minting.worker_process(settings)
    try:
        await eventually(lambda: minting.pool.fetchval(issued + " HAVING count(*) = $2", ids, ORDERS),
                         timeout_s=60, message="every order issued after the restart")
        assert await eventually(lambda: duplicates_absorbed(minting, settings.worker_metrics_port),
                                message="the killed batch redelivered and absorbed")
        restarted.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(restarted.wait) == 0, "".join(restarted.lines)
    finally:
        restarted.kill()
    await minting.assert_issued_exactly_once(orders)
