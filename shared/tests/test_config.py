"""Settings resolution: defaults, service-prefixed and shared environment variables, validation."""

from __future__ import annotations

import os

import pytest
from emeterai_shared.config import ServiceSettings
from minting_service.config import MintingSettings
from order_service.config import OrderSettings
from payment_service.config import PaymentSettings
from pydantic import ValidationError
from pydantic_settings import SettingsError
from stamping_service.config import StampingSettings

ALL: list[type[ServiceSettings]] = [OrderSettings, PaymentSettings, MintingSettings, StampingSettings]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment the suite runs in."""
    prefixes = ["EMETERAI_", *(cls.service_name.upper() + "_" for cls in ALL)]
    fields = {name.upper() for name in ServiceSettings.model_fields}
    for key in list(os.environ):
        for prefix in prefixes:
            if key.upper().startswith(prefix) and key.upper()[len(prefix):] in fields:
                monkeypatch.delenv(key)


def test_defaults_derive_database_and_ports() -> None:
    s = OrderSettings()
    assert s.database_name == "emeterai_order"
    assert s.database_url == "postgresql://root@127.0.0.1:5432/emeterai_order"
    assert (s.http_port, s.worker_metrics_port, s.relay_metrics_port) == (8081, 9081, 10081)
    ports = {cls().http_port for cls in ALL}
    assert ports == {8081, 8082, 8083, 8084}
    assert {cls().database_name for cls in ALL} == {
        "emeterai_order", "emeterai_payment", "emeterai_minting", "emeterai_stamping"}
    assert s.max_attempts == len(s.retry_delays_ms) + 1


def test_database_url_follows_base_url_and_name() -> None:
    s = PaymentSettings(pg_base_url="postgresql://app@db.internal:6543/", database_name="pay_x")
    assert s.database_url == "postgresql://app@db.internal:6543/pay_x"
    explicit = PaymentSettings(database_url="postgresql://other@h/db")
    assert explicit.database_url == "postgresql://other@h/db"


def test_service_port_variable_overrides_and_derives_side_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDER_HTTP_PORT", "7001")
    s = OrderSettings()
    assert (s.http_port, s.worker_metrics_port, s.relay_metrics_port) == (7001, 8001, 9001)
    assert PaymentSettings().http_port == 8082  # another service's variable does not leak
    assert OrderSettings(http_port=7002).http_port == 7002  # explicit arguments win


def test_common_variable_applies_to_all_but_service_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMETERAI_AMQP_URL", "amqp://u:p@shared-broker:5672/")
    monkeypatch.setenv("ORDER_AMQP_URL", "amqp://u:p@order-broker:5672/")
    assert OrderSettings().amqp_url == "amqp://u:p@order-broker:5672/"
    for cls in (PaymentSettings, MintingSettings, StampingSettings):
        assert cls().amqp_url == "amqp://u:p@shared-broker:5672/"


def test_retry_delays_from_env_as_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINTING_RETRY_DELAYS_MS", "[100, 2000, 30000]")
    s = MintingSettings()
    assert s.retry_delays_ms == [100, 2000, 30000]
    assert s.max_attempts == 4
    monkeypatch.setenv("EMETERAI_RETRY_DELAYS_MS", "[7]")
    assert StampingSettings().retry_delays_ms == [7]


@pytest.mark.parametrize("delays", [[], [0], [1000, -5], [1000, 0, 2000]])
def test_invalid_retry_delays_raise(delays: list[int]) -> None:
    with pytest.raises(ValidationError, match="retry_delays_ms"):
        OrderSettings(retry_delays_ms=delays)


@pytest.mark.parametrize("raw", ["[]", "[0, 100]", "[-1]"])
def test_invalid_retry_delays_from_env_raise(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("ORDER_RETRY_DELAYS_MS", raw)
    with pytest.raises(ValidationError, match="retry_delays_ms"):
        OrderSettings()


def test_retry_delays_that_are_not_json_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDER_RETRY_DELAYS_MS", "soon")
    with pytest.raises(SettingsError):
        OrderSettings()


def test_public_dict_hides_passwords() -> None:
    s = OrderSettings(
        pg_base_url="postgresql://app:pg-s3cret@db:5432",
        amqp_url="amqp://guest:mq-s3cret@broker:5672/vh",
    )
    public = s.public_dict()
    text = repr(public)
    assert "pg-s3cret" not in text and "mq-s3cret" not in text
    assert public["amqp_url"] == "amqp://guest:***@broker:5672/vh"
    assert public["database_url"] == "postgresql://app:***@db:5432/emeterai_order"
    assert public["pg_base_url"] == "postgresql://app:***@db:5432"
    assert public["http_port"] == 8081
    # the settings themselves keep the real values
    assert s.amqp_url == "amqp://guest:mq-s3cret@broker:5672/vh"


def test_public_dict_hides_passwords_containing_at_signs_and_keeps_passwordless_urls() -> None:
    s = OrderSettings(amqp_url="amqp://guest:p@ss@broker/", pg_base_url="postgresql://root@127.0.0.1:5432")
    public = s.public_dict()
    assert public["amqp_url"] == "amqp://guest:***@broker/"
    assert "p@ss" not in repr(public)
    assert public["database_url"] == "postgresql://root@127.0.0.1:5432/emeterai_order"


def test_several_brokers_from_the_environment_and_the_single_url_still_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert OrderSettings().amqp_addresses == ["amqp://guest:guest@127.0.0.1:5672/"]
    monkeypatch.setenv("EMETERAI_AMQP_URLS", "amqp://u:a-s3cret@n1:5672/v, amqp://u:b-s3cret@n2:5672/v,")
    s = OrderSettings()
    assert s.amqp_addresses == ["amqp://u:a-s3cret@n1:5672/v", "amqp://u:b-s3cret@n2:5672/v"]
    public = s.public_dict()
    assert "s3cret" not in repr(public)
    assert public["amqp_urls"] == "amqp://u:***@n1:5672/v, amqp://u:***@n2:5672/v,"
