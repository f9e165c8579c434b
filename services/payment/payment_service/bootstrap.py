"""Composition root of the payment service: settings, migrations, routes and subscriptions."""

from pathlib import Path

from emeterai_shared.runtime import ServiceDefinition

from payment_service.config import PaymentSettings

SERVICE = ServiceDefinition(
    name="payment",
    title="Payment service: virtual-account bills and SNAP bank callbacks",
    settings_cls=PaymentSettings,
    migrations=Path(__file__).parent / "migrations",
)
