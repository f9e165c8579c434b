import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from emeterai_shared.http import respond
from emeterai_shared.runtime import main
from payment_service.adapters.banks import generate_bank_keys, load_bank, new_bank_config, save_bank
from payment_service.adapters.banksim import BankSimulator, new_external_id
from payment_service.adapters.snap import INQUIRY_PATH, PAYMENT_PATH, TOKEN_PATH
from payment_service.adapters.snap.codes import Case, Service
from payment_service.adapters.snap.models import (
    SnapFieldError,
    SnapResult,
    payment_response,
    token_response,
    validate_inquiry,
    validate_payment,
)
from payment_service.adapters.snap.signatures import (
    parse_snap_timestamp,
    timestamp_within,
    verify_access_token_signature,
    verify_transaction_signature,
)
from payment_service.bootstrap import SERVICE

TS = "2024-09-04T10:00:00+07:00"


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return generate_bank_keys()


@pytest.fixture(scope="module")
def config(keys: tuple[bytes, bytes]) -> dict[str, str]:
    return new_bank_config(keys[1], client_id="bank-1", partner_service_id="77001")


def simulator(config: dict[str, str], private_pem: bytes, base_url: str) -> BankSimulator:
    return BankSimulator.from_config(base_url, config, private_pem)


def test_new_bank_config_shape(keys: tuple[bytes, bytes]) -> None:
    entry = new_bank_config(keys[1])
    assert set(entry) == {"client_id", "client_secret", "public_key_pem", "partner_service_id", "channel_id"}
    assert entry["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert new_bank_config(keys[1])["client_secret"] != entry["client_secret"]
    with pytest.raises(ValueError):
        new_bank_config(keys[1], partner_service_id="123456789")


def test_save_and_load_bank(tmp_path: Path, keys: tuple[bytes, bytes], config: dict[str, str]) -> None:
    save_bank(tmp_path / "bank", config, keys[0])
    assert load_bank(tmp_path / "bank") == (config, keys[0])
    assert (tmp_path / "bank" / "private_key.pem").stat().st_mode & 0o777 == 0o600


def test_external_ids_numeric_and_unique() -> None:
    ids = [new_external_id() for _ in range(10_000)]
    assert all(i.isdigit() and len(i) <= 36 for i in ids)
    assert len(set(ids)) == len(ids)


def test_token_request_verifies(keys: tuple[bytes, bytes], config: dict[str, str]) -> None:
    bank = simulator(config, keys[0], "http://biller:8082")
    path, headers, body = bank.build_token_request(timestamp=TS)
    assert path == TOKEN_PATH
    assert json.loads(body) == {"grantType": "client_credentials"}
    assert headers["X-CLIENT-KEY"] == "bank-1"
    assert headers["X-TIMESTAMP"] == TS
    assert verify_access_token_signature(
        config["public_key_pem"],
        headers["X-CLIENT-KEY"],
        headers["X-TIMESTAMP"],
        headers["X-SIGNATURE"],
    )


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize(("base_url", "prefix"), [("http://b:1", ""), ("http://b:1/api/", "/api")])
def test_payment_request_verifies(
    keys: tuple[bytes, bytes],
    config: dict[str, str],
    indent: int | None,
    base_url: str,
    prefix: str,
) -> None:
    bank = simulator(config, keys[0], base_url)
    body = bank.payment_body("0000001", 25000, payment_request_id="req-1")
    path, headers, raw = bank.build_signed_request(
        PAYMENT_PATH, body, access_token="tok", timestamp=TS, external_id="123", indent=indent
    )
    assert path == prefix + PAYMENT_PATH
    assert headers["Authorization"] == "Bearer tok"
    assert headers["X-PARTNER-ID"] == "bank-1"
    assert headers["X-EXTERNAL-ID"] == "123"
    assert headers["CHANNEL-ID"] == config["channel_id"]
    assert (b"\n" in raw) == (indent is not None)
    assert verify_transaction_signature(config["client_secret"], "POST", path, "tok", raw, TS, headers["X-SIGNATURE"])
    assert not verify_transaction_signature(
        config["client_secret"], "POST", path, "tok2", raw, TS, headers["X-SIGNATURE"]
    )
    request = validate_payment(raw)
    assert request.va_digits == "770010000001"
    assert request.paid_amount.to_rupiah() == 25000
    assert request.payment_request_id == request.trx_id == "req-1"


def test_inquiry_body_validates(keys: tuple[bytes, bytes], config: dict[str, str]) -> None:
    bank = simulator(config, keys[0], "http://b:1")
    _, _, raw = bank.build_signed_request(INQUIRY_PATH, bank.inquiry_body("42"), access_token="tok")
    assert validate_inquiry(raw).virtual_account_no == "   7700142"


class FakeBiller:
    """A minimal biller built on the SNAP library, in a background thread."""

    def __init__(self, config: dict[str, str]) -> None:
        self.config = config
        self.payments: list[tuple[str, dict[str, Any]]] = []
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def token(self, request: web.Request) -> web.Response:
        client_id, timestamp = request.headers["X-CLIENT-KEY"], request.headers["X-TIMESTAMP"]
        known = client_id == self.config["client_id"]
        fresh = timestamp_within(parse_snap_timestamp(timestamp), datetime.now(UTC))
        public_key = self.config["public_key_pem"]
        if not (
            known
            and fresh
            and verify_access_token_signature(public_key, client_id, timestamp, request.headers["X-SIGNATURE"])
        ):
            return respond(SnapResult.of("4017300"), status=401)
        return respond(token_response("the-token", 900))

    async def payment(self, request: web.Request) -> web.Response:
        raw = await request.read()
        signed = verify_transaction_signature(
            self.config["client_secret"],
            request.method,
            request.path,
            "the-token",
            raw,
            request.headers["X-TIMESTAMP"],
            request.headers["X-SIGNATURE"],
        )
        if request.headers.get("Authorization") != "Bearer the-token" or not signed:
            return respond(SnapResult.of("4012500"), status=401)
        try:
            body = validate_payment(raw)
        except SnapFieldError as exc:
            return respond(exc.response(Service.PAYMENT), status=400)
        self.payments.append((request.headers["X-EXTERNAL-ID"], json.loads(raw)))
        code = Case.SUCCESS.code(Service.PAYMENT)
        return respond(payment_response(code, body, "00", "Success", "Sukses"), exclude_none=True)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post(TOKEN_PATH, self.token)
        app.router.add_post(PAYMENT_PATH, self.payment)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def __enter__(self) -> str:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def biller(config: dict[str, str]) -> Iterator[tuple[str, FakeBiller]]:
    fake = FakeBiller(config)
    with fake as url:
        yield url, fake


def test_simulator_against_biller(
    keys: tuple[bytes, bytes], config: dict[str, str], biller: tuple[str, FakeBiller]
) -> None:
    url, fake = biller

    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        async with simulator(config, keys[0], url) as bank:
            first = await bank.pay("0000001", 25000, "req-1")
            again = await bank.pay("0000001", 25000, "req-1", flag_advise="Y")
            return [first, again]

    (status, body), (status2, body2) = asyncio.run(scenario())
    assert (status, body["responseCode"]) == (200, "2002500")
    assert body["virtualAccountData"]["paymentFlagStatus"] == "00"
    assert (status2, body2["virtualAccountData"]["flagAdvise"]) == (200, "Y")
    (id1, pay1), (id2, pay2) = fake.payments
    assert id1 != id2
    assert pay1["paymentRequestId"] == pay2["paymentRequestId"] == "req-1"


def test_simulator_refused_token(keys: tuple[bytes, bytes], biller: tuple[str, FakeBiller]) -> None:
    url, _ = biller
    stranger = new_bank_config(keys[1], client_id="stranger")

    async def scenario() -> None:
        async with simulator(stranger, keys[0], url) as bank:
            status, body = await bank.get_token()
            assert (status, body["responseCode"], bank.access_token) == (401, "4017300", None)
            with pytest.raises(RuntimeError):
                await bank.pay("1", 1)

    asyncio.run(scenario())


def bank_cli(argv: list[str]) -> int:
    """``python -m payment_service bank ARGV``."""
    return main(SERVICE, ["bank", *argv])


def test_cli_keygen_then_unknown_bank(
    tmp_path: Path, biller: tuple[str, FakeBiller], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = biller
    bank_dir = tmp_path / "bank"
    assert bank_cli(["keygen", "--out", str(bank_dir), "--client-id", "x"]) == 0
    assert load_bank(bank_dir)[0]["client_id"] == "x"
    assert bank_cli(["--url", url, "--bank-dir", str(bank_dir), "token"]) == 1
    assert "4017300" in capsys.readouterr().out


def test_cli_pay(
    tmp_path: Path,
    keys: tuple[bytes, bytes],
    config: dict[str, str],
    biller: tuple[str, FakeBiller],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, fake = biller
    save_bank(tmp_path, config, keys[0])
    argv = ["--url", url, "--bank-dir", str(tmp_path), "pay", "--va", "770010000009"]
    assert bank_cli([*argv, "--amount", "12500", "--external-id", "77"]) == 0
    assert '"2002500"' in capsys.readouterr().out
    assert fake.payments[0][0] == "77"
    assert fake.payments[0][1]["customerNo"] == "0000009"
    with pytest.raises(SystemExit):
        bank_cli([*argv[:-1], "880010000009", "--amount", "1"])
    assert bank_cli(["--url", "http://127.0.0.1:9", "--bank-dir", str(tmp_path), "token"]) == 1
