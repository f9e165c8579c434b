"""The order service's front doors are shed before anything is read: each declares its refusals by
arithmetic (``shed_early``), which the HTTP middleware runs before the span, the body and the token
(their behaviour: ``integration/test_order_api.py``)."""

from __future__ import annotations

from aiohttp import web
from emeterai_shared.http import SHED_EARLY
from emeterai_shared.runtime import Router
from order_service.entrypoints.http import routes


def test_orders_and_sign_in_shed_early() -> None:
    app = web.Application()
    routes(Router(app, None))
    early = {f"{route.method} {route.resource.canonical}" for route in app.router.routes()
             if route.resource is not None and getattr(route.handler, SHED_EARLY, None) is not None}
    assert early == {"POST /v1/orders", "POST /v1/auth/otp", "POST /v1/auth/token", "POST /v1/auth/refresh",
                     "POST /v1/accounts"}  # new accounts: only the newcomers' pace (and overloaded)


def test_the_routes_that_open_a_session_document_the_place_their_refusal_gives() -> None:
    from emeterai_shared.admission import QUEUE_COOKIE
    from emeterai_shared.http import OpenApi

    spec = OpenApi("order")
    routes(Router(web.Application(), spec))
    doc = spec.document()
    for path in ("/v1/auth/otp", "/v1/accounts"):
        op = doc["paths"][path]["post"]
        assert set(op["responses"]["503"]["headers"]) == {"Retry-After", "Set-Cookie"}, path
        assert {"name": QUEUE_COOKIE, "in": "cookie"}.items() <= next(
            p for p in op["parameters"] if p["in"] == "cookie").items(), path
    assert set(doc["paths"]["/v1/orders"]["post"]["responses"]["503"]["headers"]) == {"Retry-After"}


def test_the_sign_in_routes_document_the_refresh_cookie_and_the_order_view_its_long_poll() -> None:
    from emeterai_shared.http import OpenApi
    from order_service.entrypoints.http import REFRESH_COOKIE

    spec = OpenApi("order")
    routes(Router(web.Application(), spec))
    paths = spec.document()["paths"]
    for path in ("/v1/auth/token", "/v1/auth/refresh"):
        assert REFRESH_COOKIE in paths[path]["post"]["responses"]["200"]["headers"]["Set-Cookie"]["description"]
    assert "Set-Cookie" in paths["/v1/auth/logout"]["post"]["responses"]["204"]["headers"]
    assert {"name": REFRESH_COOKIE, "in": "cookie"}.items() <= next(
        p for p in paths["/v1/auth/refresh"]["post"]["parameters"] if p["in"] == "cookie").items()
    view = paths["/v1/orders/{order_id}"]["get"]
    assert {p["name"] for p in view["parameters"]} == {"order_id", "If-None-Match", "wait_s"}
    assert set(view["responses"]["200"]["headers"]) == {"ETag"}
    assert set(view["responses"]["304"]["headers"]) == {"ETag"}
