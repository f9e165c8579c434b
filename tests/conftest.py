"""Fixtures for cross-service tests: the purchase services as real processes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from emeterai_shared.testing.fixtures import settings_for
from emeterai_shared.testing.platform import Platform, prepare
from order_service.bootstrap import SERVICE as ORDER
from order_service.config import OrderSettings
from payment_service.bootstrap import SERVICE as PAYMENT
from payment_service.config import PaymentSettings
from payment_service.snap.banksim import BankSimulator, generate_bank_keys, new_bank_config

PlatformFactory = Callable[..., contextlib.AbstractAsyncContextManager[Platform]]


@pytest.fixture(scope="module")
def purchase_platform(servers: str, tmp_path_factory: pytest.TempPathFactory) -> PlatformFactory:
    """``async with purchase_platform(**payment_settings) as p``: order and payment services
    (api, worker, relay each) on fresh databases, with one generated partner bank."""

    @contextlib.asynccontextmanager
    async def start(**payment_overrides: Any) -> AsyncIterator[Platform]:
        tmp = tmp_path_factory.mktemp("platform")
        private_pem, public_pem = generate_bank_keys()
        bank = new_bank_config(public_pem, partner_service_id="88908")
        (tmp / "banks.json").write_text(json.dumps({"banks": [bank]}))
        order = settings_for(OrderSettings, secrets_dir=str(tmp / "secrets"))
        payment = settings_for(PaymentSettings, secrets_dir=str(tmp / "secrets"),
                               partners_file=str(tmp / "banks.json"), **payment_overrides)
        await prepare([ORDER, PAYMENT], [order, payment])
        p = Platform(logs=tmp)
        p.add(ORDER, order)
        p.add(PAYMENT, payment)
        p.extras.update(bank=bank, bank_key=private_pem)
        try:
            await p.start(("order", "api"), ("order", "worker"), ("order", "relay"))  # creates keys
            await p.start(("payment", "api"), ("payment", "worker"), ("payment", "relay"))
            yield p
        finally:
            p.stop()

    return start


def bank_for(p: Platform, session: aiohttp.ClientSession) -> BankSimulator:
    return BankSimulator.from_config(p.url("payment"), p.extras["bank"], p.extras["bank_key"], session=session)


def customer_no(p: Platform, virtual_account_no: str) -> str:
    prefix = p.extras["bank"]["partner_service_id"]
    assert virtual_account_no.startswith(prefix), (virtual_account_no, prefix)
    return virtual_account_no[len(prefix):]


@pytest.fixture
def bank_client() -> Callable[[Platform, aiohttp.ClientSession], BankSimulator]:
    return bank_for


@pytest.fixture
def va_customer_no() -> Callable[[Platform, str], str]:
    return customer_no
