"""Fixtures for cross-service tests: the purchase services (and, on request, stamping) as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from emeterai_shared.config import ServiceSettings
from emeterai_shared.runtime import ServiceDefinition
from emeterai_testkit.fixtures import settings_env, settings_for
from emeterai_testkit.platform import Platform, prepare
from minting_service.bootstrap import SERVICE as MINTING
from minting_service.config import MintingSettings
from order_service.bootstrap import SERVICE as ORDER
from order_service.config import OrderSettings
from payment_service.bootstrap import SERVICE as PAYMENT
from payment_service.config import PaymentSettings
from payment_service.snap.banksim import BankSimulator, generate_bank_keys, new_bank_config
from stamping_service.bootstrap import SERVICE as STAMPING
from stamping_service.config import StampingSettings

PlatformFactory = Callable[..., contextlib.AbstractAsyncContextManager[Platform]]


@pytest.fixture(scope="module")
def purchase_platform(servers: str, tmp_path_factory: pytest.TempPathFactory) -> PlatformFactory:
    """``async with purchase_platform(**payment_settings) as p``: order and payment services
    (api, worker, relay each) on fresh databases, with one generated partner bank."""

    @contextlib.asynccontextmanager
    async def start(*, stock: int | None = None, stamping: bool = False, order_overrides: dict[str, Any] | None = None,
                    stamping_overrides: dict[str, Any] | None = None, process_env: dict[str, str] | None = None,
                    minting_overrides: dict[str, Any] | None = None,
                    **payment_overrides: Any) -> AsyncIterator[Platform]:
        """``stock``: also run the minting service, with that many serials in stock; ``stamping``:
        also run the stamping service (needs ``stock``). ``*_overrides``: that service's settings;
        ``process_env``: extra environment of every process (e.g. where to export traces)."""
        assert not stamping or stock is not None, "stamping needs minting: pass stock"
        tmp = tmp_path_factory.mktemp("platform")
        private_pem, public_pem = generate_bank_keys()
        bank = new_bank_config(public_pem, partner_service_id="88908")
        (tmp / "banks.json").write_text(json.dumps({"banks": [bank]}))
        order = settings_for(OrderSettings, secrets_dir=str(tmp / "secrets"), **(order_overrides or {}))
        payment = settings_for(PaymentSettings, secrets_dir=str(tmp / "secrets"),
                               partners_file=str(tmp / "banks.json"), **payment_overrides)
        services: list[tuple[ServiceDefinition, ServiceSettings]] = [(ORDER, order), (PAYMENT, payment)]
        if stock is not None:
            services.append((MINTING, settings_for(MintingSettings, secrets_dir=str(tmp / "secrets"),
                                                   **(minting_overrides or {}))))
        if stamping:
            services.append((STAMPING, settings_for(StampingSettings, secrets_dir=str(tmp / "secrets"),
                                                    **(stamping_overrides or {}))))
        await prepare([d for d, _ in services], [s for _, s in services])
        p = Platform(logs=tmp, env=dict(process_env or {}))
        for defn, settings in services:
            p.add(defn, settings)
        p.extras.update(bank=bank, bank_key=private_pem)
        try:
            await p.start(("order", "api"), ("order", "worker"), ("order", "relay"))  # creates keys
            await p.start(*((d.name, kind) for d, _ in services[1:] for kind in ("api", "worker", "relay")))
            if stock:
                await run_command(p, "minting", "stock", "add", "--count", str(stock))
            yield p
        finally:
            p.stop()

    return start


async def run_command(p: Platform, service: str, *args: str) -> str:
    """Run an operator command of ``service`` as a real process with the platform's settings."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"{service}_service", *args, env=settings_env(p.settings[service]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


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
def command() -> Callable[..., Any]:
    return run_command


@pytest.fixture
def va_customer_no() -> Callable[[Platform, str], str]:
    return customer_no
