"""The test kit's client as a well-behaved caller: a refusal is waited out for its ``Retry-After``
and sent again with the cookies the refusal set (a place in a line, as a browser sends it back),
never with another caller's; and the report can tell refusals apart by their code and reason."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from emeterai_testkit.clients import Client, Stats


async def test_a_refusal_s_cookie_goes_back_with_its_retry_and_only_with_it() -> None:
    seen: list[str | None] = []

    async def front(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        if request.cookies.get("line") == "place-1" or "X-Another-Caller" in request.headers:
            return web.json_response({"ok": True}, status=202)
        response = web.json_response(
            {"error": {"code": "busy", "message": "this server is busy finishing the purchases: come back in 1 s",
                       "retry_after_s": 1, "retry_at": "soon"}}, status=503, headers={"Retry-After": "1"})
        response.set_cookie("line", f"place-{len(seen)}", path="/", httponly=True, samesite="Strict")
        return response

    app = web.Application()
    app.router.add_post("/front", front)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        stats = Stats()
        client = Client(session, {"svc": str(server.make_url(""))}, stats=stats, require_retry_after=True)
        answer = await client.call("POST", "svc", "/front", "POST /front")
        assert answer.status == 202
        assert seen == [None, "line=place-1"]  # the first try had none; its retry carried its place
        await client.call("POST", "svc", "/front", "POST /front", headers={"X-Another-Caller": "1"})
    assert seen[2] is None  # never another caller's place (the session keeps no cookie of an IP host)
    assert stats.shed_by_reason == {"POST /front 503 busy: this server is busy finishing the purchases": 1}
