"""SNAP under a database fault: ``504xx00`` Timeout with ``Retry-After`` (SNAP's "try again", which a
bank follows with an advice), never ``5002x00`` General Error, and nothing recorded; an internal
error proper stays ``5002x00``.

The fault: an api whose database hangs up during the connection handshake, as PostgreSQL does while
it goes down or comes back up (asyncpg raises the builtin ``ConnectionError`` family from
``connect``), so the shared server is never restarted. The internal error: an api whose database
connections see no tables (``search_path`` pointing nowhere), a misconfiguration, not a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
from emeterai_shared.db import create_pool
from emeterai_testkit.fixtures import serve_api
from payment_service.adapters.snap import PAYMENT_PATH
from payment_service.bootstrap import SERVICE

if TYPE_CHECKING:
    from conftest import Payment


@contextlib.asynccontextmanager
async def api_whose_database_hangs_up(payment: Payment) -> AsyncIterator[str]:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = payment.settings.model_copy(update={"database_url": f"postgresql://root@127.0.0.1:{port}/gone"})
    pool = await create_pool(settings.database_url, min_size=0, max_size=2)
    try:
        async with serve_api(SERVICE, settings, pool) as base_url:
            yield base_url
    finally:
        pool.terminate()
        server.close()
        await server.wait_closed()


async def post(base_url: str, request: tuple[str, dict[str, str], bytes]) -> tuple[int, Any, str | None]:
    path, headers, raw = request
    async with aiohttp.ClientSession() as http, http.post(base_url + path, data=raw, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def test_snap_answers_a_database_fault_with_timeout_and_retry_after(payment: Payment) -> None:
    bill = await payment.place_order()
    before = await payment.state()
    async with payment.bank() as bank, api_whose_database_hangs_up(payment) as faulty:
        status, body, retry_after = await post(faulty, bank.build_token_request())
        assert (status, body["responseCode"]) == (504, "5047300") and int(retry_after or 0) >= 1

        token_status, _ = await bank.get_token()  # from the healthy api: the faulty one must check it
        assert token_status == 200 and bank.access_token is not None
        customer_no = str(bill["virtual_account_no"])[len(bank.partner_service_id):]
        request = bank.build_signed_request(PAYMENT_PATH, bank.payment_body(customer_no, 12_500),
                                            access_token=bank.access_token)
        status, body, retry_after = await post(faulty, request)
        assert (status, body["responseCode"]) == (504, "5042500") and int(retry_after or 0) >= 1
    assert await payment.state() == before  # nothing was captured: the bank's advice will be the payment


async def test_an_internal_error_is_still_5002500(payment: Payment) -> None:
    bill = await payment.place_order()
    before = await payment.state()
    pool = await create_pool(payment.settings.database_url + "?search_path=nowhere", max_size=2)
    try:
        async with serve_api(SERVICE, payment.settings, pool) as broken, payment.bank() as bank:
            await bank.get_token()  # from the healthy api
            other = payment.bank(base_url=broken)
            other.access_token = bank.access_token
            async with other:
                status, answer = await other.pay(str(bill["virtual_account_no"])[len(bank.partner_service_id):],
                                                 12_500)
                assert (status, answer) == (500, {"responseCode": "5002500", "responseMessage": "General Error"})
    finally:
        await pool.close()
    assert await payment.state() == before
