"""Composition root of the order service: settings, migrations, routes and subscriptions."""

from pathlib import Path

from emeterai_shared.runtime import ServiceDefinition

from order_service.config import OrderSettings

SERVICE = ServiceDefinition(
    name="order",
    title="Order service: accounts, orders and the front door",
    settings_cls=OrderSettings,
    migrations=Path(__file__).parent / "migrations",
)
