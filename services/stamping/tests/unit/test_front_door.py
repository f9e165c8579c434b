"""Uploads are shed before anything is read: the route declares its refusals by arithmetic
(``shed_early``), which the HTTP middleware runs before the span, the body and the token."""

from __future__ import annotations

from aiohttp import web
from emeterai_shared.http import SHED_EARLY
from emeterai_shared.runtime import Router
from stamping_service.entrypoints.http import routes


def test_only_the_upload_front_door_sheds_early() -> None:
    app = web.Application()
    routes(Router(app, None))
    early = {f"{route.method} {route.resource.canonical}" for route in app.router.routes()
             if route.resource is not None and getattr(route.handler, SHED_EARLY, None) is not None}
    assert early == {"POST /v1/stampings"}
