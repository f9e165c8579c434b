"""Composition root of the minting service: settings, migrations, routes and subscriptions."""

from pathlib import Path

from emeterai_shared.runtime import ServiceDefinition

from minting_service.config import MintingSettings

SERVICE = ServiceDefinition(
    name="minting",
    title="Minting service: serial issuance, stamp tokens and the stamp registry",
    settings_cls=MintingSettings,
    migrations=Path(__file__).parent / "migrations",
)
