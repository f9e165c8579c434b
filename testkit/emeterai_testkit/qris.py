"""QRIS in tests: a platform whose payment service has one acquirer, the acquirer simulator
(``payment_service.adapters.acquirersim``) as a real HTTP server, and the payment database's view
of a QRIS bill."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payment_service.adapters.acquirersim import AcquirerSimulator, new_acquirer_entry

from emeterai_testkit.fixtures import fetchval, free_port
from emeterai_testkit.platform import Platform


@dataclass
class Qris:
    platform: Platform
    sim: AcquirerSimulator
    port: int


@contextlib.asynccontextmanager
async def qris_platform(purchase_platform: Callable[..., Any], directory: Path, **settings: Any) -> AsyncIterator[Qris]:
    """``purchase_platform(**settings)`` with a partners file naming one acquirer: a simulator
    serving it on a free port (started first, stopped last), its notify pointed at the platform."""
    port = free_port()
    entry, sim_key = new_acquirer_entry(f"http://127.0.0.1:{port}/snap")
    sim = AcquirerSimulator(entry, sim_key)
    runner = await sim.start(port)
    partners = directory / "partners.json"
    partners.write_text(json.dumps({"banks": [], "acquirers": [entry]}))
    try:
        async with purchase_platform(partners_file=str(partners), **settings) as p:
            sim.merchant_url = p.url("payment")
            yield Qris(p, sim, port)
    finally:
        await runner.cleanup()


async def partner_reference_of(platform: Platform, order_id: str) -> str:
    """The ``partnerReferenceNo`` of the order's bill."""
    value: str = await fetchval(platform.settings["payment"],
                                "SELECT partner_reference_no FROM bills WHERE order_id = $1::uuid", order_id)
    return value


async def captures(platform: Platform, order_id: str) -> int:
    """How many ``payment.captured.v1`` the payment service wrote for the order."""
    count: int = await fetchval(platform.settings["payment"], "SELECT count(*) FROM outbox WHERE message_type ="
                                " 'payment.captured.v1' AND correlation_id = $1", order_id)
    return count
