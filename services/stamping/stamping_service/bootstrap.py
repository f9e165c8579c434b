"""Composition root of the stamping service: settings, token keys, migrations, routes and subscriptions."""

import os
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

from aiohttp import web
from emeterai_shared.auth import TokenVerifier, load_public_keys
from emeterai_shared.http import OpenApi
from emeterai_shared.messaging import Subscription
from emeterai_shared.runtime import Context, ServiceDefinition

from stamping_service.config import StampingSettings
from stamping_service.entrypoints import http, messages


def _verifier(ctx: Context) -> TokenVerifier:
    """The buyer-token verifier, read once per process from the order service's public key(s).

    The key pair belongs to the order service (which creates it in development); a missing file
    is an error here, never a reason to create keys."""
    verifier = ctx.extras.get("verifier")
    if verifier is None:
        path = Path(ctx.settings.auth_public_key_file)
        if not path.is_file():
            raise RuntimeError(f"stamping: the token public key file {path} does not exist; it is the order "
                               f"service's (run `python -m order_service setup` first, or set "
                               f"STAMPING_AUTH_PUBLIC_KEY_FILE)")
        verifier = ctx.extras["verifier"] = TokenVerifier(load_public_keys(path))
    assert isinstance(verifier, TokenVerifier)
    return verifier


def _inspect_pool(ctx: Context) -> Executor:
    """The process pool PDF inspection runs in (sized to the cores), created once per process.

    ``on_start`` creates it; an app built without ``on_start`` (tests) creates it at its first
    upload. It is shut down when the process closes, or when the app is cleaned up."""
    executor = ctx.extras.get("inspect_pool")
    if executor is None:
        executor = ctx.extras["inspect_pool"] = ProcessPoolExecutor(max_workers=os.cpu_count() or 1)

        async def close() -> None:
            _shutdown_inspect_pool(ctx)

        ctx.closers.append(close)
    assert isinstance(executor, ProcessPoolExecutor)
    return executor


def _shutdown_inspect_pool(ctx: Context) -> None:
    executor = ctx.extras.pop("inspect_pool", None)
    if isinstance(executor, ProcessPoolExecutor):
        executor.shutdown(wait=False, cancel_futures=True)


async def _on_start(ctx: Context) -> None:
    _verifier(ctx)  # a process without the public key fails at start, not at its first request
    _inspect_pool(ctx)


def _routes(ctx: Context, app: web.Application, spec: OpenApi) -> None:
    settings = ctx.settings
    assert isinstance(settings, StampingSettings)
    http.add_routes(app, spec, ctx.pool, lambda: _verifier(ctx), settings, lambda: _inspect_pool(ctx))

    async def cleanup(_app: web.Application) -> None:
        _shutdown_inspect_pool(ctx)

    app.on_cleanup.append(cleanup)


def _subscriptions(_ctx: Context) -> list[Subscription]:
    return messages.subscriptions()


SERVICE = ServiceDefinition(
    name="stamping",
    title="Stamping service: PDF stamping, signing and verification",
    settings_cls=StampingSettings,
    migrations=Path(__file__).parent / "migrations",
    subscriptions=_subscriptions,
    routes=_routes,
    on_start=_on_start,
)
