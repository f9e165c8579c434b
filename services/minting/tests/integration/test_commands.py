"""Stock and operator commands, run as real processes, and the database's own guards.

* ``stock add`` generates valid serials with the prefix asked; ``stock show`` reports them;
  ``stock ensure`` tops up once, even when two run at the same moment, then adds nothing;
* bad arguments exit 2; ``void`` voids STOCK and UNUSED serials and names the others;
* a generated serial that already exists is replaced; the stock gauge job counts the stock;
* the database refuses any backward transition and any deletion of a serial;
* the development signing key is created on first start, and ``GET /v1/keys`` serves every
  published key.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from emeterai_shared.auth import key_id
from emeterai_shared.config import ServiceSettings
from emeterai_shared.contracts.events import MintingFailed
from emeterai_shared.runtime import Resources
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import REPO_ROOT, settings_env
from minting_service.bootstrap import SERVICE
from minting_service.domain.serial import generate, is_valid
from minting_service.service_layer.stock import add_stock
from prometheus_client import REGISTRY

if TYPE_CHECKING:
    from conftest import Minting


async def run(settings: ServiceSettings, *args: str) -> tuple[int, Any, str]:
    """``python -m minting_service ARGS``: exit code, JSON output (or None), stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "minting_service", *args, env=settings_env(settings), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, json.loads(out) if out.strip() else None, err.decode()


async def test_stock_add_and_show(minting: Minting) -> None:
    code, before, err = await run(minting.settings, "stock", "show")
    assert code == 0, err
    assert before["available"] == await minting.stock()
    code, added, err = await run(minting.settings, "stock", "add", "--count", "20000", "--prefix", "T1")
    assert code == 0, err
    assert added["added"] == 20_000 and added["available"] == before["available"] + 20_000
    assert added["by_prefix"]["T1"] == 20_000
    serials = [r["sn"] for r in await minting.pool.fetch("SELECT sn FROM serials WHERE prefix = 'T1'")]
    assert len(serials) == 20_000 and all(sn.startswith("T1") and is_valid(sn) for sn in serials)
    code, after, err = await run(minting.settings, "stock", "show")
    assert code == 0, err
    assert {k: after[k] for k in ("available", "by_prefix")} == {k: added[k] for k in ("available", "by_prefix")}
    assert set(after) == {"available", "by_prefix", "unused", "stamped", "void", "orders_awaiting_stock"}


async def test_stock_ensure_tops_up_once_even_when_run_twice_at_once(minting: Minting) -> None:
    target = await minting.stock() + 300
    results = await asyncio.gather(*(run(minting.settings, "stock", "ensure", "--min", str(target))
                                     for _ in range(2)))
    assert all(code == 0 for code, _, _ in results), results
    assert sorted(out["added"] for _, out, _ in results) == [0, 300]
    assert await minting.stock() == target
    code, out, err = await run(minting.settings, "stock", "ensure", "--min", str(target))
    assert (code, out["added"], out["available"]) == (0, 0, target), err


@pytest.mark.parametrize("args", [["stock", "add", "--count", "0"], ["stock", "add", "--count", "5", "--prefix", "ab"],
                                  ["stock", "ensure", "--min", "5", "--prefix", "ABCDE"], ["stock"]])
async def test_bad_arguments_exit_2(minting: Minting, args: list[str]) -> None:
    stock = await minting.stock()
    code, _, err = await run(minting.settings, *args)
    assert code == 2 and "usage" in err
    assert await minting.stock() == stock


async def test_void_command(minting: Minting) -> None:
    stock = await minting.pool.fetchval("SELECT sn FROM serials WHERE status = 'STOCK' ORDER BY seq DESC LIMIT 1")
    unknown = generate()
    code, out, err = await run(minting.settings, "void", stock, unknown, "--reason", "leaked")
    assert code == 0, err
    assert out == {"voided": [stock], "refused": {unknown: "UNKNOWN"}}
    row = await minting.pool.fetchrow("SELECT status, void_reason FROM serials WHERE sn = $1", stock)
    assert tuple(row) == ("VOID", "leaked")
    code, out, err = await run(minting.settings, "void", stock.lower())
    assert (code, out) == (0, {"voided": [], "refused": {stock: "VOID"}}), err


async def test_void_command_refuses_issued_serials(minting: Minting) -> None:
    """An issued serial is in a buyer's quota: voiding it in the registry alone would leave the
    buyer a stamp the registry refuses and no refund. It is voided through its order."""
    async with minting.worker():
        order = minting.order(1)
        await minting.publish(order)
        await minting.issuance(order.order_id)
    [issued] = await minting.serials_of(order.order_id)
    code, out, err = await run(minting.settings, "void", issued)
    assert (code, out) == (0, {"voided": [], "refused": {issued: "UNUSED"}}), err
    assert await minting.pool.fetchval("SELECT status FROM serials WHERE sn = $1", issued) == "UNUSED"


async def test_waiting_orders_are_listed_and_refunded_by_an_operator(minting: Minting) -> None:
    async with minting.worker():
        order = minting.order(await minting.stock() + 1)
        await minting.publish(order)
        assert (await minting.issuance(order.order_id))["status"] == "WAITING"
    code, out, err = await run(minting.settings, "waiting", "list")
    assert code == 0, err
    assert [(w["order_id"], w["quantity"]) for w in out["waiting"]] == [(str(order.order_id), str(order.quantity))]
    code, out, err = await run(minting.settings, "waiting", "refund", "--order", str(order.order_id),
                               "--reason", "no stock today")
    assert (code, out) == (0, {"refunded": [str(order.order_id)]}), err
    issuance = await minting.issuance(order.order_id)
    assert (issuance["status"], issuance["reason"]) == ("FAILED", "no stock today")
    [failed] = await minting.events(MintingFailed.TYPE, order.order_id)
    assert isinstance(failed, MintingFailed) and failed.reason == "no stock today"
    code, out, err = await run(minting.settings, "waiting", "refund", "--all")
    assert (code, out) == (0, {"refunded": []}), err
    assert (await run(minting.settings, "waiting", "list"))[1] == {"waiting": []}


async def test_a_serial_that_exists_is_generated_again(minting: Minting) -> None:
    taken = await minting.pool.fetchval("SELECT sn FROM serials LIMIT 1")
    made = iter([taken, taken])

    def make(prefix: str) -> str:
        return next(made, None) or generate(prefix)

    stock = await minting.stock()
    async with unit_of_work(minting.pool) as uow:
        assert await add_stock(uow, 3, make=make) == 3
    assert await minting.stock() == stock + 3


async def test_stock_gauge_job(minting: Minting) -> None:
    job, serve = SERVICE.periodic
    assert (job.name, serve.name) == ("stock-gauge", "serve-waiting-orders")
    assert job.interval(minting.settings) == minting.settings.stock_refresh_interval_s
    assert serve.interval(minting.settings) == minting.settings.stock_wait_retry_interval_s
    await job.run(await SERVICE.dependencies(Resources(settings=minting.settings, pool=minting.pool)))
    assert REGISTRY.get_sample_value("emeterai_stock_available") == await minting.stock()
    waiting = await minting.pool.fetchval("SELECT count(*) FROM issuances WHERE status = 'WAITING'")
    assert REGISTRY.get_sample_value("emeterai_orders_awaiting_stock") == waiting


async def test_the_database_refuses_backward_transitions_and_deletions(minting: Minting) -> None:
    # A serial of its own, added and voided in one transaction: no worker of this session can issue
    # it in between (the stock left by earlier tests may be gone by now).
    stock = generate("")
    async with unit_of_work(minting.pool) as uow:
        assert await add_stock(uow, 1, make=lambda _prefix: stock) == 1
        await uow.conn.execute("UPDATE serials SET status = 'VOID' WHERE sn = $1", stock)
    for statement in ("UPDATE serials SET status = 'STOCK' WHERE sn = $1",
                      "UPDATE serials SET status = 'UNUSED', order_id = gen_random_uuid(), issued_at = now() "
                      "WHERE sn = $1",
                      "UPDATE serials SET sn = 'X' || substr(sn, 2) WHERE sn = $1",
                      "DELETE FROM serials WHERE sn = $1"):
        try:
            result = await minting.pool.execute(statement, stock)
        except asyncpg.RaiseError:
            continue
        row = await minting.pool.fetchrow("SELECT * FROM serials WHERE sn = $1", stock)
        pytest.fail(f"{statement!r} was not refused ({result}); the serial now: {dict(row) if row else None}")
    assert await minting.pool.fetchval("SELECT status FROM serials WHERE sn = $1", stock) == "VOID"


async def test_the_signing_key_is_created_once_and_every_published_key_is_served(
        minting: Minting, tmp_path: Path) -> None:
    settings = minting.settings.model_copy(update={"signing_key_file": str(tmp_path / "dev" / "signing.pem")})
    code, _, err = await run(settings, "stock", "show")
    assert code == 0, err
    pem = Path(settings.signing_key_file)
    assert stat.S_IMODE(os.stat(pem).st_mode) == 0o600 and pem.with_suffix(".pub").exists()
    content = pem.read_bytes()
    assert (await run(settings, "stock", "show"))[0] == 0 and pem.read_bytes() == content

    next_key = Ed25519PrivateKey.generate().public_key()
    published = tmp_path / "published.pem"
    published.write_bytes(pem.with_suffix(".pub").read_bytes() + next_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    signing = serialization.load_pem_private_key(content, password=None).public_key()
    async with minting.api(signing_key_file=str(pem), published_keys_file=str(published)) as base_url:
        status, body, _ = await minting.get("/v1/keys", base_url)
    assert status == 200
    assert [k["kid"] for k in body["keys"]] == [key_id(signing), key_id(next_key)]  # type: ignore[arg-type]
