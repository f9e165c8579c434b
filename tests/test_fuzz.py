"""Schemathesis over the published OpenAPI document of each of the four services, as real processes.

Every check (``--checks all``: no server error, statuses, content types, headers and bodies as
documented, schema-valid requests accepted, invalid ones refused, missing headers and credentials
refused, unsupported methods 405, ...) in every phase: the documents' examples, coverage, fuzzing,
and the stateful phase, which follows the documents' OpenAPI links (account → order → order read;
upload → stamping → document) with real ids.

The fuzzer acts as a buyer who has paid for stamps (bearer token), as a partner system (the
``X-Api-Key`` of the partners file, for the partner-only routes) and as the development bank
(``tests/fuzz_hooks.py`` signs each SNAP request with the bank's keys, so it reaches past the
signature check). The hooks also give valid requests what a schema cannot state (a real PDF, a
fresh Idempotency-Key, a VA number made of its parts).

CI runs a few examples per operation (``FUZZ_EXAMPLES``, default 8) in schemathesis's deterministic
mode; ``make fuzz`` runs many more from a random seed (``FUZZ_SEED``; see the README's "Fuzzing").
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.documents import sample_pdf
from emeterai_testkit.fixtures import REPO_ROOT, eventually
from emeterai_testkit.platform import Platform

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
SEED = os.environ.get("FUZZ_SEED", "")
"""Unset (CI): schemathesis's deterministic mode, the same cases on every run; set: random cases
from that seed (a failure names the seed that reproduces it)."""
STAMPS = 5
PARTNER_ID, PARTNER_KEY = "fuzz-partner", "fuzz-partner-api-key-0123456789"
GENEROUS = 1_000_000
"""Per-caller rate limits out of the way: the fuzzer is one caller sending as fast as it can (429s are
documented and tested elsewhere; here they would only hide the logic behind them)."""
SERVICES = ("order", "payment", "minting", "stamping")


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    partners = tmp_path_factory.mktemp("partners") / "partners.json"
    partners.write_text(json.dumps({"partners": [{"partner_id": PARTNER_ID, "api_key": PARTNER_KEY,
                                                  "max_quantity": 100}]}))
    order = {"partners_file": str(partners), "order_rate_per_account_per_s": GENEROUS,
             "order_burst_per_account": GENEROUS, "partner_rate_per_s": GENEROUS, "partner_burst": GENEROUS}
    stamping = {"partners_file": str(partners), "pdf_workers": 1, "upload_rate_per_account_per_s": GENEROUS,
                "upload_burst_per_account": GENEROUS, "verify_rate_per_s": GENEROUS, "verify_burst": GENEROUS}
    async with purchase_platform(stock=100, stamping=True, order_overrides=order, stamping_overrides=stamping,
                                 minting_overrides={"registry_rate_per_s": GENEROUS, "registry_burst": GENEROUS}
                                 ) as p:
        yield p


@pytest.fixture(scope="module")
async def buyer_token(platform: Platform) -> str:
    """A buyer who has paid for ``STAMPS`` stamps, all in the stamping service's quota."""
    async with aiohttp.ClientSession() as session:
        bank = platform.simulator(session)
        assert platform.bank is not None
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id, bill = await buyer.billed_order(STAMPS)
        customer_no = platform.bank.customer_no(bill["virtual_account_no"])
        status, body = await bank.pay(customer_no, bill["amount"])
        assert (status, body["responseCode"]) == (200, "2002500"), body
        await buyer.status_becomes(order_id, "FULFILLED")

        async def credited() -> bool:
            async with session.get(f"{platform.url('stamping')}/v1/quota", headers=buyer.auth) as r:
                return r.status == 200 and (await r.json())["available"] == STAMPS

        await eventually(credited, timeout_s=60, interval_s=0.2, message="the stamps in the stamping quota")
        return buyer.token


async def run_schemathesis(platform: Platform, service: str, token: str, workdir: Path) -> tuple[int, str]:
    bank_file = workdir / "bank.json"
    assert platform.bank is not None
    bank_file.write_text(json.dumps({"config": platform.bank.config, "base_url": platform.url("payment"),
                                     "private_key_pem": platform.bank.private_pem.decode()}))
    pdf = workdir / "document.pdf"
    pdf.write_bytes(sample_pdf(3))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "FUZZ_BANK": str(bank_file), "FUZZ_PDF": str(pdf),
           "FUZZ_TOKEN": token, "FUZZ_API_KEY": PARTNER_KEY,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("st")), "run",
        f"{platform.url(service)}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(EXAMPLES), *(["--seed", SEED] if SEED else ["--generation-deterministic"]),
        "--workers", "1", "--request-timeout", "30", "--no-color",
        "--report", "junit", "--report-dir", str(workdir / "report"),
        cwd=workdir, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("service", SERVICES)
async def test_the_published_api_holds_under_schemathesis(platform: Platform, buyer_token: str, service: str,
                                                          tmp_path: Path) -> None:
    code, output = await run_schemathesis(platform, service, buyer_token, tmp_path)
    assert code == 0, f"schemathesis found problems in the {service} service:\n{output[-20000:]}"
    assert "passed" in output, output[-3000:]
