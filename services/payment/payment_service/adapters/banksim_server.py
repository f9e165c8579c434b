"""The development bank as a small HTTP server, for the web app's clearly marked "pay" control
under ``make run`` (``python -m payment_service bank --bank-dir var/dev-bank serve``; the ingress
routes ``/dev/bank/`` here in development only, never in compose or production).

``POST /dev/bank/pay {"virtual_account_no"}`` makes the simulator do what a customer's bank does:
an inquiry for the bill behind the virtual account, then the payment of its amount, both as signed
SNAP calls to the payment service, like any partner bank. ``GET /dev/bank/`` says whether a
development bank is there (404 when the platform runs against real banks only). Listens on
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from payment_service.adapters.banks import BANK_FILE, PRIVATE_KEY_FILE
from payment_service.adapters.banksim import BankSimulator

INQUIRY_OK = "2002400"


def _bank_files(bank_dir: Path) -> tuple[dict[str, str], bytes] | None:
    try:
        return json.loads((bank_dir / BANK_FILE).read_text()), (bank_dir / PRIVATE_KEY_FILE).read_bytes()
    except (OSError, ValueError):
        return None


def app(biller_url: str, bank_dir: Path) -> web.Application:
    async def status(_: web.Request) -> web.Response:
        files = _bank_files(bank_dir)
        if files is None:
            return web.json_response({"error": {"code": "no_dev_bank", "message": "no development bank"}}, status=404)
        return web.json_response({"bank": files[0].get("client_id"), "partner_service_id": files[0].get(
            "partner_service_id")})

    async def pay(request: web.Request) -> web.Response:
        files = _bank_files(bank_dir)
        if files is None:
            return web.json_response({"error": {"code": "no_dev_bank", "message": "no development bank"}}, status=404)
        try:
            body = await request.json()
            va = str(body["virtual_account_no"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": {"code": "invalid_request",
                                                "message": 'send {"virtual_account_no": "<digits>"}'}}, status=400)
        config, private_pem = files
        async with BankSimulator.from_config(biller_url, config, private_pem) as bank:
            prefix = bank.partner_service_id
            if not va.isdigit() or not va.startswith(prefix) or len(va) == len(prefix):
                return web.json_response({"error": {"code": "unknown_virtual_account",
                                                    "message": f"not a virtual account of bank {prefix}"}}, status=404)
            customer_no = va[len(prefix):]
            try:
                code, inquiry = await bank.inquiry(customer_no)
                if inquiry.get("responseCode") != INQUIRY_OK:
                    return web.json_response({"inquiry": inquiry}, status=409)
                amount = round(float(inquiry["virtualAccountData"]["totalAmount"]["value"]))
                code, payment = await bank.pay(customer_no, amount)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return web.json_response({"error": {"code": "biller_unreachable", "message": str(exc)}}, status=502)
        answer: dict[str, Any] = {"inquiry": inquiry, "payment": payment}
        return web.json_response(answer, status=200 if 200 <= code < 300 else 409)

    application = web.Application(client_max_size=4096)
    application.add_routes([web.get("/dev/bank/", status), web.post("/dev/bank/pay", pay)])
    return application


async def serve(biller_url: str, bank_dir: Path, port: int) -> int:
    runner = web.AppRunner(app(biller_url, bank_dir), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    print(f"development bank ({bank_dir}) pays virtual accounts on http://127.0.0.1:{port}/dev/bank/pay", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0
