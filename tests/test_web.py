"""The applicants' page in a real browser (Debian's Chromium driven by Playwright) at a phone's
size, against real processes of the four services behind the real ingress (nginx), through the
controls' accessible names, as an applicant (and the checks we do not see) would use them.

The journey: sign in with the code from the development SMS sink, buy two stamps (the price split
into duty and fee), reload in the middle of the payment, pay through the development bank's
control and watch the status change by itself, see the stamps, stamp page 2 of a generated PDF by
clicking on its preview, watch the job finish, download it and check it with pyHanko (intact,
trusted, the serial in the reason), verify it on the public page, then a copy with one byte changed
("not intact"). Then a refused document (no stamp used), the waiting room (the order front door
really sheds: the page waits for Retry-After and buys once, by itself), history with the receipt
and the refund of the unused stamp, and the English switch. Screenshots of each step go to
``var/artifacts/web/``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from asn1crypto import x509
from emeterai_testkit.clients import SmsInbox
from emeterai_testkit.documents import sample_pdf
from emeterai_testkit.fixtures import REPO_ROOT, eventually, fetchval, free_port
from emeterai_testkit.platform import Platform, ingress
from payment_service.adapters import banksim_server
from payment_service.adapters.acquirersim import AcquirerSimulator, new_acquirer_entry
from payment_service.adapters.banks import save_bank
from playwright.async_api import Browser, Page, Request, async_playwright, expect
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "var" / "artifacts" / "web"
PHONE_VIEWPORT = {"width": 360, "height": 740}
# The order front door lets each account order once, then one order per 30 s: a second purchase
# right after the first is really shed (429 + Retry-After), whatever the machine's speed.
ORDER_LIMITS = {"order_burst_per_account": 1, "order_rate_per_account_per_s": 1 / 30,
                "otp_phone_interval_s": 0, "otp_client_limit": 1000, "trusted_proxies": "127.0.0.1"}
UI_TIMEOUT_MS = 120_000
"""How long the page may take for anything (generous: a slow machine only waits longer)."""
expect.set_options(timeout=UI_TIMEOUT_MS)


@pytest.fixture(scope="module")
async def site(purchase_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[
        tuple[Platform, str]]:
    """The platform behind the ingress, with the development pay controls: the bank simulator's
    (``/dev/bank/``) and a QRIS acquirer's (the simulator, a real HTTP server, at ``/dev/acquirer/``)."""
    acquirer_port = free_port()
    entry, sim_key = new_acquirer_entry(f"http://127.0.0.1:{acquirer_port}/snap")
    sim = AcquirerSimulator(entry, sim_key)
    acquirer = await sim.start(acquirer_port)
    try:
        async with purchase_platform(stock=20, stamping=True, order_overrides=ORDER_LIMITS,
                                     stamping_overrides={"pdf_workers": 1}, qris_interval_s=0.2) as p:
            assert p.bank is not None
            partners_file = Path(p.settings["payment"].partners_file)  # type: ignore[attr-defined]
            partners = json.loads(partners_file.read_text())
            partners["acquirers"] = [entry]
            partners_file.write_text(json.dumps(partners))
            await p.restart("payment", "api")
            await p.restart("payment", "worker")
            sim.merchant_url = p.url("payment")
            bank_dir = tmp_path_factory.mktemp("dev-bank")
            save_bank(bank_dir, p.bank.config, p.bank.private_pem)
            runner = web.AppRunner(banksim_server.app(p.url("payment"), bank_dir))
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                async with ingress(p, tmp_path_factory.mktemp("ingress"), dev_bank=f"127.0.0.1:{port}",
                                   dev_acquirer=f"127.0.0.1:{acquirer_port}") as url:
                    yield p, url
            finally:
                await runner.cleanup()
    finally:
        await acquirer.cleanup()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        await b.close()


@contextlib.asynccontextmanager
async def phone(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=PHONE_VIEWPORT, is_mobile=True, has_touch=True,
                                        accept_downloads=True, locale="id-ID")
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    except BaseException:
        with contextlib.suppress(Exception):  # what the phone showed, in the failed test's report
            print(f"the page at the failure: {page.url}\n{(await page.inner_text('body', timeout=5000))[:3000]}")
            await shot(page, f"failed-{uuid.uuid4().hex[:8]}")
        raise
    finally:
        await context.close()
    assert not errors, f"script errors on the page: {errors}"


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def new_phone() -> str:
    return f"+62815{uuid.uuid4().int % 10**8:08d}"


async def sign_in(page: Page, url: str, platform: Platform, number: str) -> None:
    await page.goto(url + "/")
    await expect(page.get_by_role("heading", name="Masuk")).to_be_visible()
    await page.get_by_label("Nomor HP").fill(number)
    since = datetime.now(UTC)
    await page.get_by_role("button", name="Kirim kode").click()
    inbox = SmsInbox(platform.settings["order"].dev_sms_file)  # type: ignore[attr-defined]
    code = await inbox.code(number, since, timeout_s=90)
    await page.get_by_label("Kode dari SMS").fill(code)
    await shot(page, "1-masuk")
    await page.get_by_role("button", name="Masuk", exact=True).click()
    await expect(page.get_by_role("heading", name="Beli e-meterai")).to_be_visible()


async def go(page: Page, name: str) -> None:
    """Follow a link of the menu."""
    await page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()


async def buy(page: Page, quantity: int) -> str:
    await page.get_by_label("Jumlah meterai").fill(str(quantity))
    await page.get_by_role("button", name="Beli sekarang").click()
    await page.wait_for_url(re.compile(r"/bayar/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


async def pdf_validates(platform: Platform, pdf: bytes) -> tuple[bool, str]:
    """pyHanko: intact and trusted against the root minting publishes; the signature's reason."""
    async with aiohttp.ClientSession() as session, session.get(f"{platform.url('minting')}/v1/keys") as r:
        keys = (await r.json())["keys"]
    [key] = [k for k in keys if k.get("purpose") == "pdf-signature"]
    root = x509.Certificate.load(base64.b64decode(key["x5c"][-1]))
    [signature] = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
    result = await async_validate_pdf_signature(signature, ValidationContext(trust_roots=[root]))
    return bool(result.intact and result.valid and result.trusted), str(signature.sig_object["/Reason"])


async def test_the_whole_journey_on_a_phone(site: tuple[Platform, str], browser: Browser, tmp_path: Path) -> None:
    platform, url = site
    async with phone(browser) as page:
        await sign_in(page, url, platform, new_phone())

        # Beli: the price split into duty and fee before ordering
        await page.get_by_label("Jumlah meterai").fill("2")
        await expect(page.get_by_text("Bea meterai (Rp 10.000 \u00d7 2)")).to_be_visible()
        await expect(page.locator(".price")).to_contain_text("Rp 20.000")
        await shot(page, "2-beli")
        order_id = await buy(page, 2)

        # Bayar: the virtual account, a reload in the middle, then the development bank pays
        va = page.locator("#va-no")
        await expect(va).to_have_text(re.compile(r"^[0-9]{8,}$"))
        number = await va.text_content()
        await expect(page.get_by_text(re.compile("Bayar sebelum"))).to_be_visible()
        assert platform.bank is not None  # the bank's name (here its client id: the test bank has no name)
        await expect(page.locator("#bank-name")).to_have_text(platform.bank.config["client_id"])
        await shot(page, "3-bayar")
        await page.reload()  # the session comes back from the HttpOnly cookie, the order from the URL
        await expect(page.locator("#va-no")).to_have_text(number or "")
        await page.get_by_role("button", name="Simulasi: bayar dari bank pengembangan").click()
        await expect(page.get_by_text("Selesai: meterai siap dipakai")).to_be_visible()  # no reload
        await shot(page, "4-dibayar")

        # Meterai saya
        await go(page, "Meterai saya")
        await expect(page.locator("#available")).to_have_text("2")
        await shot(page, "5-meterai")

        # Bubuhkan: page 2 of a three-page PDF, placed by clicking on the preview
        document = tmp_path / "surat-lamaran.pdf"
        document.write_bytes(sample_pdf(pages=3))
        await go(page, "Bubuhkan")
        await page.get_by_label("Pilih dokumen PDF").set_input_files(str(document))
        await page.get_by_label("Halaman", exact=True).select_option("2")
        preview = page.get_by_role("img", name="Pratinjau halaman 2")
        await expect(preview).to_be_visible()
        box = await preview.bounding_box()
        assert box is not None
        await preview.click(position={"x": box["width"] * 0.7, "y": box["height"] * 0.8})
        await expect(page.locator("#where")).to_contain_text("Posisi meterai")
        await page.get_by_label("Alasan (opsional)").fill("Lamaran CASN")
        await shot(page, "6-bubuhkan")
        await page.get_by_role("button", name="Bubuhkan meterai").click()

        # Progress, then Unduh
        await expect(page.get_by_text("Selesai", exact=True)).to_be_visible()
        sn = await page.locator(".sn").text_content()
        await shot(page, "7-selesai")
        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Unduh dokumen").click()
        stamped = Path(await (await download_info.value).path()).read_bytes()
        assert stamped.startswith(document.read_bytes()), "the stamp is an incremental update of the upload"
        trusted, reason = await pdf_validates(platform, stamped)
        assert trusted and reason == f"[{sn}] Lamaran CASN"

        # Verifikasi (public): the stamped file, then a copy with one byte changed
        (tmp_path / "stamped.pdf").write_bytes(stamped)
        tampered = bytearray(stamped)
        at = stamped.index(b"/MediaBox") + 12  # a digit of the first page's box, inside the signed range
        tampered[at] = ord("7") if tampered[at] != ord("7") else ord("8")
        (tmp_path / "tampered.pdf").write_bytes(bytes(tampered))
        await go(page, "Verifikasi")
        await page.get_by_label("Pilih PDF yang bermeterai").set_input_files(str(tmp_path / "stamped.pdf"))
        await page.get_by_role("button", name="Periksa").click()
        await expect(page.locator("#verdict")).to_have_text("Dokumen sah: semua meterai utuh dan terdaftar.")
        await expect(page.get_by_text(f"Nomor seri {sn}")).to_be_visible()
        await shot(page, "8-verifikasi")
        await page.get_by_label("Pilih PDF yang bermeterai").set_input_files(str(tmp_path / "tampered.pdf"))
        await page.get_by_role("button", name="Periksa").click()
        await expect(page.locator("#verdict")).to_have_text("Dokumen TIDAK sah.")
        await expect(page.get_by_text("tidak utuh")).to_be_visible()
        await shot(page, "9-verifikasi-rusak")

        # A refused document uses no stamp
        broken = tmp_path / "rusak.pdf"
        broken.write_bytes(b"%PDF-1.7\nthis is not a document\n")
        await go(page, "Bubuhkan")
        await page.get_by_label("Pilih dokumen PDF").set_input_files(str(broken))
        await page.get_by_role("button", name="Bubuhkan meterai").click()
        await expect(page.get_by_role("alert")).to_contain_text("Tidak ada meterai yang terpakai.")
        await shot(page, "10-ditolak")
        await go(page, "Meterai saya")
        await expect(page.locator("#available")).to_have_text("1")
        await expect(page.locator("#used")).to_have_text("1")
        unused = await page.locator(".serials li").first.text_content()
        assert unused and unused != sn

        # Riwayat: the order with its receipt, and the refund of the unused stamp
        await go(page, "Riwayat")
        orders = page.get_by_role("list", name="Pembelian")
        await expect(orders.get_by_role("listitem")).to_have_count(1)
        async with page.expect_download() as receipt_info:
            await orders.get_by_role("button", name="Kuitansi").click()
        receipt = Path(await (await receipt_info.value).path()).read_bytes()
        assert receipt.startswith(b"%PDF")
        await orders.get_by_role("button", name="Kembalikan dana meterai yang belum dipakai").click()
        await expect(orders.get_by_text("Pengembalian dana diminta.").first).to_be_visible()
        await shot(page, "11-riwayat")

        # English
        await page.get_by_role("button", name="English").click()
        await expect(page.get_by_role("heading", name="History")).to_be_visible()
        await expect(page.get_by_role("link", name="My stamps")).to_be_visible()
        await page.get_by_role("button", name="Bahasa Indonesia").click()
        await expect(page.get_by_role("heading", name="Riwayat")).to_be_visible()

    async def status(serial: str) -> str:
        async with aiohttp.ClientSession() as session, session.get(
                f"{platform.url('minting')}/v1/stamps/{serial}") as r:
            return str((await r.json())["status"])

    async def refunded() -> bool:
        return await status(unused) == "VOID"

    await eventually(refunded, timeout_s=120, message=f"the refunded serial {unused} VOID in the registry")
    assert await status(sn or "") == "STAMPED"
    assert order_id


async def test_the_waiting_room_buys_once_by_itself(site: tuple[Platform, str], browser: Browser) -> None:
    platform, url = site
    async with phone(browser) as page:
        await sign_in(page, url, platform, new_phone())
        await buy(page, 1)
        await go(page, "Beli")
        await page.get_by_label("Jumlah meterai").fill("1")
        await page.get_by_role("button", name="Beli sekarang").click()
        # the front door sheds the second order (429 + Retry-After): the page says so and waits
        room = page.get_by_role("alertdialog", name="Antrean penuh")
        await expect(room).to_be_visible()
        await expect(room).to_contain_text("tidak ada biaya")
        await expect(room).to_contain_text(re.compile(r"Mencoba lagi dalam \d+ detik"))
        await shot(page, "12-antrean")
        await page.wait_for_url(re.compile(r"/bayar/[0-9a-f-]{36}$"), timeout=UI_TIMEOUT_MS)
        await expect(room).to_be_hidden()
        await go(page, "Riwayat")
        # the retried purchase bought once: two orders in all
        await expect(page.get_by_role("list", name="Pembelian").get_by_role("listitem")).to_have_count(2)


async def test_paying_by_qris_draws_the_qr_and_the_status_changes_by_itself(
        site: tuple[Platform, str], browser: Browser) -> None:
    platform, url = site
    async with phone(browser) as page:
        asked: list[Request] = []
        page.on("request", lambda request: asked.append(request) if "/v1/orders/" in request.url else None)
        await sign_in(page, url, platform, new_phone())
        await page.get_by_label("Jumlah meterai").fill("1")
        await page.get_by_label("QRIS").check()
        await page.get_by_role("button", name="Beli sekarang").click()
        await page.wait_for_url(re.compile(r"/bayar/[0-9a-f-]{36}$"))
        order_id = page.url.rsplit("/", 1)[1]
        qr = page.get_by_role("img", name="Kode QRIS untuk membayar")
        await expect(qr).to_be_visible()
        stored = await fetchval(platform.settings["order"], "SELECT qr_content FROM orders WHERE id = $1::uuid",
                                order_id)
        assert stored and await qr.get_attribute("data-content") == stored  # the acquirer's string, as drawn
        await expect(page.get_by_text("Rp 12.500")).to_be_visible()
        await shot(page, "13-qris")
        await page.get_by_role("button", name="Simulasi: bayar dari bank pengembangan").click()
        await expect(page.get_by_text("Selesai: meterai siap dipakai")).to_be_visible()
        # the page followed the order by long polls: once it holds a view, it asks with that view's ETag
        # and wait_s, and the server answers when the order changes (the QR, the payment, the stamps)
        views = [r for r in asked if r.url.split("?")[0].endswith(f"/v1/orders/{order_id}") and r.method == "GET"]
        held = [r for r in views if "wait_s=" in r.url]
        assert held, [r.url for r in views]
        for request in held:
            assert (await request.all_headers()).get("if-none-match"), request.url


async def qris_refused(platform: Platform) -> bool:
    """GET /v1/pricing says QRIS is unavailable (the order api has read the acquirers' state)."""
    async with aiohttp.ClientSession() as session, session.get(f"{platform.url('order')}/v1/pricing") as r:
        assert r.status == 200, await r.text()
        return not {m["method"]: m["available"] for m in (await r.json())["payment_methods"]}["qris"]


async def not_refused(platform: Platform) -> bool:
    return not await qris_refused(platform)


async def test_while_qris_is_unavailable_the_page_offers_the_virtual_account(
        site: tuple[Platform, str], browser: Browser) -> None:
    """The order service's word that the QRIS acquirer is down (its projection of
    ``payment.acquirer_state.v1``, written here as the order worker would; the event's path is
    tests/test_qris_outage.py's): buying by QRIS is answered 503 qris_unavailable, which the page
    does not wait out: it says so and selects the virtual account; another applicant's page has QRIS
    off from the start (GET /v1/pricing)."""
    platform, url = site
    order_db = platform.settings["order"]
    async with phone(browser) as page:
        await sign_in(page, url, platform, new_phone())
        await fetchval(order_db, "INSERT INTO acquirer_states (acquirer_id, available, retry_at, takes_new_bills,"
                       " changed_at) VALUES ('web-test-acquirer', false, now() + interval '1 minute', true, now())"
                       " RETURNING 1")
        try:
            await eventually(lambda: qris_refused(platform), message="the order api reads the outage (within "
                             "ORDER_ACQUIRER_STATE_TTL_S)")
            await page.get_by_label("Jumlah meterai").fill("1")
            await page.get_by_label("QRIS").check()
            await page.get_by_role("button", name="Beli sekarang").click()
            await expect(page.locator("#alert")).to_contain_text("QRIS sedang tidak tersedia")
            await expect(page.locator("#alert")).to_contain_text("virtual account")
            await expect(page.get_by_label("QRIS")).to_be_disabled()
            await expect(page.get_by_label("Virtual account bank")).to_be_checked()
            await expect(page.get_by_role("alertdialog", name="Antrean penuh")).to_be_hidden()
            # the note under the choice says until when, without repeating the alert
            await expect(page.locator("#qris-note")).to_contain_text("QRIS sedang tidak tersedia sampai")
            await expect(page.locator("#qris-note")).not_to_contain_text("virtual account")
            await shot(page, "14-qris-tidak-tersedia")
            async with phone(browser) as fresh:  # another applicant (a fresh cache): GET /v1/pricing says it
                await sign_in(fresh, url, platform, new_phone())
                await expect(fresh.locator("#qris-note")).to_contain_text("QRIS sedang tidak tersedia")
                await expect(fresh.get_by_label("QRIS")).to_be_disabled()
                await expect(fresh.get_by_label("Virtual account bank")).to_be_checked()
        finally:
            await fetchval(order_db, "DELETE FROM acquirer_states WHERE acquirer_id = 'web-test-acquirer'"
                           " RETURNING 1")
            await eventually(lambda: not_refused(platform), message="the order api reads that QRIS is back")
