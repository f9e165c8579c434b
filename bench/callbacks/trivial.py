"""``python -m bench.callbacks.trivial PORT``: the trivial endpoint the payment API is compared with.

One process served like the services' APIs (uvloop, ``AppRunner`` without access log): any POST
parses its JSON body and answers a small JSON object; ``GET /readyz`` answers for start-up.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"responseCode": "2000000", "fields": len(body)})


async def ready(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_post("/{path:.*}", echo)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True, backlog=1024).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
