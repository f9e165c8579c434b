"""Composition root of the order service: settings, keys, partners, routes, subscriptions."""

from datetime import timedelta
from pathlib import Path

from emeterai_shared.auth import TokenIssuer, TokenVerifier, ensure_keypair, load_public_keys
from emeterai_shared.runtime import Context, ServiceDefinition

from order_service.adapters.partners import PartnerRegistry
from order_service.config import OrderSettings
from order_service.entrypoints.http import Auth, routes
from order_service.entrypoints.messages import subscriptions


async def on_start(ctx: Context) -> None:
    """Load (in development: create) the token key pair and the partner list."""
    settings = ctx.settings
    assert isinstance(settings, OrderSettings)
    private_path, public_path = Path(settings.private_key_path), Path(settings.auth_public_key_file)
    try:
        ensure_keypair(private_path, public_path)
    except FileExistsError:
        pass  # another process created it at the same moment
    ctx.extras["issuer"] = TokenIssuer(private_path.read_bytes(), timedelta(seconds=settings.token_ttl_s))
    ctx.extras["auth"] = Auth(TokenVerifier(load_public_keys(public_path)),
                              PartnerRegistry.from_file(settings.partners_file),
                              settings.buyer_max_quantity)


SERVICE = ServiceDefinition(
    name="order",
    title="Order service: accounts, orders and the front door",
    settings_cls=OrderSettings,
    migrations=Path(__file__).parent / "migrations",
    subscriptions=subscriptions,
    routes=routes,
    on_start=on_start,
)
