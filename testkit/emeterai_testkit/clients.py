"""A buyer as the public contract sees it: accounts and orders over HTTP.

Used by cross-service tests and by the rush simulator.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from emeterai_testkit.fixtures import eventually


class Buyer:
    def __init__(self, session: aiohttp.ClientSession, order_url: str):
        self.session = session
        self.url = order_url
        self.token = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def register(self, name: str = "Pelamar CASN", phone: str = "+6281200000000") -> None:
        async with self.session.post(f"{self.url}/v1/accounts", json={"name": name, "phone": phone}) as r:
            assert r.status == 201, await r.text()
            self.token = (await r.json())["token"]

    async def order(self, quantity: int = 2, bank: str | None = None, max_waits: int = 30) -> str:
        """Place an order; a 429 or 503 is waited out for its ``Retry-After`` and the same request
        (the same Idempotency-Key) sent again, as a well-behaved client does."""
        body: dict[str, Any] = {"quantity": quantity}
        if bank is not None:
            body["bank"] = bank
        headers = {**self.auth, "Idempotency-Key": str(uuid.uuid4())}
        for _ in range(max_waits):
            async with self.session.post(f"{self.url}/v1/orders", json=body, headers=headers) as r:
                if r.status in (429, 503) and "Retry-After" in r.headers:
                    wait = float(r.headers["Retry-After"])
                else:
                    assert r.status == 202, await r.text()
                    return str((await r.json())["order_id"])
            await asyncio.sleep(wait)
        raise AssertionError(f"the order was refused {max_waits} times with Retry-After")

    async def get(self, order_id: str) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/v1/orders/{order_id}", headers=self.auth) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body

    async def bill(self, order_id: str, timeout_s: float = 60) -> dict[str, Any]:
        """The payment instructions, once the payment service has issued the bill."""
        async def ready() -> dict[str, Any] | None:
            payment: dict[str, Any] | None = (await self.get(order_id))["payment"]
            return payment

        found: dict[str, Any] = await eventually(ready, timeout_s=timeout_s, message=f"bill of {order_id}")
        return found

    async def status_becomes(self, order_id: str, status: str, timeout_s: float = 90) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            order = await self.get(order_id)
            return order if order["status"] == status else None

        found: dict[str, Any] = await eventually(reached, timeout_s=timeout_s,
                                                 message=f"order {order_id} {status}")
        return found
