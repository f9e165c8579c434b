"""Fixtures for cross-service tests: the purchase services (and, on request, stamping) as real
processes, started by the test kit's one launcher (``emeterai_testkit.platform``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.platform import Platform, launched, new_bank, platform_settings

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
        bank = new_bank(tmp)
        names = ["order", "payment"] + (["minting"] if stock is not None else []) + (["stamping"] if stamping else [])
        services = platform_settings(names, tmp, overrides={
            "order": order_overrides or {}, "payment": payment_overrides, "minting": minting_overrides or {},
            "stamping": stamping_overrides or {}})
        async with launched(services, tmp, bank=bank, process_env=process_env, stock=stock) as p:
            yield p

    return start


async def run_command(p: Platform, service: str, *args: str) -> str:
    """Run an operator command of ``service`` as a real process with the platform's settings."""
    return await p.command(service, *args)


def bank_for(p: Platform, session: aiohttp.ClientSession) -> Any:
    return p.simulator(session)


def customer_no(p: Platform, virtual_account_no: str) -> str:
    assert p.bank is not None
    return p.bank.customer_no(virtual_account_no)


@pytest.fixture
def bank_client() -> Callable[[Platform, aiohttp.ClientSession], Any]:
    return bank_for


@pytest.fixture
def command() -> Callable[..., Any]:
    return run_command


@pytest.fixture
def va_customer_no() -> Callable[[Platform, str], str]:
    return customer_no
