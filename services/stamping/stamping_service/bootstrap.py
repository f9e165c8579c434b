"""Composition root of the stamping service: settings, migrations, routes and subscriptions."""

from pathlib import Path

from emeterai_shared.runtime import ServiceDefinition

from stamping_service.config import StampingSettings

SERVICE = ServiceDefinition(
    name="stamping",
    title="Stamping service: PDF stamping, signing and verification",
    settings_cls=StampingSettings,
    migrations=Path(__file__).parent / "migrations",
)
