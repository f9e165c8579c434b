"""Receipts (pure: no I/O): the numbering rules and the PDF renderer.

* the year of a receipt is the payment's year in Asia/Jakarta time (UTC+7), even at midnight;
* numbers are ``EM-<year>-<7 digits>``, from 1, growing a digit past 9 999 999;
* the duty (Rp 10.000 x n) and the service fee are shown apart and add up to the total;
* the PDF is one A4 page that shows the figures, the payment and its reference, the serials and the
  refunds (none, or each one given to the renderer), and the same receipt gives the same bytes;
  many serials are summarised and a line too long for the page is set smaller, then cut.
"""

from __future__ import annotations

import dataclasses
import io
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from emeterai_testkit.documents import pdf_text
from order_service.adapters.receipt_pdf import SERIAL_COLUMNS, SERIAL_ROWS, render_receipt
from order_service.domain.order import price
from order_service.domain.receipt import Payment, Receipt, ReceiptRefund, receipt_number, receipt_year, rupiah, wib
from pyhanko.pdf_utils.reader import PdfFileReader


@pytest.mark.parametrize(("paid_at", "year"), [
    (datetime(2026, 12, 31, 16, 59, 59, tzinfo=UTC), 2026),
    (datetime(2026, 12, 31, 17, 0, 0, tzinfo=UTC), 2027),  # midnight in Jakarta
    (datetime(2027, 1, 1, 6, 59, tzinfo=timezone(timedelta(hours=7))), 2027),
    (datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=8))), 2026),  # 23:30 WIB on 31 December
    (datetime(2026, 12, 31, 17, 0, 0), 2027),  # no zone: UTC
])
def test_the_year_is_the_payment_year_in_jakarta(paid_at: datetime, year: int) -> None:
    assert receipt_year(paid_at) == year


def test_numbers_are_the_year_and_seven_digits_from_one() -> None:
    assert receipt_number(2026, 1) == "EM-2026-0000001"
    assert receipt_number(2027, 1234567) == "EM-2027-1234567"
    assert receipt_number(2027, 12345678) == "EM-2027-12345678"
    with pytest.raises(ValueError):
        receipt_number(2026, 0)
    numbers = [receipt_number(2026, n) for n in range(1, 1001)]
    assert sorted(numbers) == numbers  # they sort in the order they were given


def test_rupiah_and_wib() -> None:
    assert rupiah(10_000) == "Rp 10.000"
    assert rupiah(1_250_000) == "Rp 1.250.000"
    assert rupiah(0) == "Rp 0"
    assert wib(datetime(2026, 12, 31, 17, 5, 9, tzinfo=UTC)) == "2027-01-01 00:05:09 WIB"


def receipt(quantity: int = 2, *, serials: list[str] | None = None,
            refunds: list[ReceiptRefund] | None = None, payment: Payment | None = None) -> Receipt:
    return Receipt(
        receipt_no="EM-2026-0000042", order_id=uuid.UUID(int=7), account_id=uuid.UUID(int=9), buyer="Siti (Budi)",
        paid_at=datetime(2026, 12, 6, 8, 30, tzinfo=UTC), quantity=quantity, total=price(quantity, 2_500),
        payment=payment or Payment("va", "bank-a", "PRQ-000123", "REF-77", "8808000012345678"),
        serials=[f"SN{i:020d}" for i in range(quantity)] if serials is None else serials, refunds=refunds or [])


def test_duty_and_fee_are_shown_apart_and_add_up() -> None:
    r = receipt(3)
    assert (r.duty, r.fee, r.total) == (30_000, 7_500, 37_500)
    assert r.duty + r.fee == r.total


def test_the_reference_is_the_banks_reference_number_else_its_payment_request_id() -> None:
    assert Payment("va", "bank-a", "PRQ-1", "REF-1").reference == "REF-1"
    assert Payment("va", "bank-a", "PRQ-1", None).reference == "PRQ-1"
    assert Payment("va", "bank-a", None, None).reference is None


def test_the_pdf_is_one_a4_page_with_the_figures() -> None:
    r = receipt(2)
    data = render_receipt(r, seller="PT Contoh (Persero)")
    assert data.startswith(b"%PDF-")
    assert render_receipt(r, seller="PT Contoh (Persero)") == data  # deterministic
    reader = PdfFileReader(io.BytesIO(data), strict=False)
    pages = reader.root["/Pages"]
    assert pages["/Count"] == 1
    assert [float(x) for x in pages["/Kids"][0].get_object()["/MediaBox"]] == pytest.approx([0, 0, 595.2756, 841.8898])
    [text] = pdf_text(data)
    lines = text.splitlines()
    for expected in ("KWITANSI PEMBAYARAN E-METERAI", "PT Contoh (Persero)", "EM-2026-0000042", str(uuid.UUID(int=7)),
                     "Siti (Budi)", str(uuid.UUID(int=9)), "2026-12-06 15:30:00 WIB",
                     "Rp 10.000 x 2 = Rp 20.000", "Rp 5.000", "Rp 25.000", "Virtual Account (VA)", "bank-a",
                     "8808000012345678", "REF-77", "PRQ-000123", "SN00000000000000000000", "SN00000000000000000001",
                     "Tidak ada", "None"):
        assert expected in lines, (expected, lines)
    for english in ("Receipt no.", "Stamp duty", "Service fee", "Total paid", "Payment method", "Bank reference",
                    "Stamp serial numbers", "Refunds", "Paid at (Western Indonesia Time)"):
        assert english in lines
    assert lines.index("Pengembalian dana") < lines.index("Tidak ada")


def test_the_pdf_lists_the_refunds_it_is_given() -> None:
    refunds = [ReceiptRefund(uuid.UUID(int=1), ["SN00000000000000000001"], 12_500, "REFUNDED"),
               ReceiptRefund(uuid.UUID(int=2), ["SN00000000000000000002", "SN00000000000000000003"], 25_000,
                             "PENDING")]
    [text] = pdf_text(render_receipt(receipt(4, refunds=refunds), seller="s"))
    lines = text.splitlines()
    assert "Tidak ada" not in lines
    assert "Rp 12.500 - 1 meterai / stamps - dikembalikan (REFUNDED)" in lines
    assert "Rp 25.000 - 2 meterai / stamps - diproses (PENDING)" in lines
    assert f"ID {uuid.UUID(int=2)}: SN00000000000000000002, SN00000000000000000003" in lines
    assert "Jumlah dikembalikan / Total refunded: Rp 37.500" in lines


def test_many_serials_stay_on_one_page_summarised() -> None:
    shown = SERIAL_COLUMNS * SERIAL_ROWS
    data = render_receipt(receipt(shown + 5), seller="s")
    [text] = pdf_text(data)
    lines = text.splitlines()
    assert f"SN{shown - 1:020d}" in lines and f"SN{shown:020d}" not in lines
    assert "... dan 5 lainnya / and 5 more (lihat / see JSON)" in lines
    assert "Rp 10.000 x 41 = Rp 410.000" in lines


def test_a_receipt_before_serials_says_so() -> None:
    [text] = pdf_text(render_receipt(receipt(1, serials=[], payment=Payment("va", None, None, None)), seller="s"))
    lines = text.splitlines()
    assert "Belum diterbitkan" in lines and "Not issued yet" in lines
    assert lines[lines.index("Referensi bank") + 1] == "-"


def test_a_line_too_long_for_the_page_is_set_smaller_then_cut() -> None:
    long_name = "Siti " + "Aminah " * 20
    r = dataclasses.replace(receipt(1), buyer=long_name)
    [text] = pdf_text(render_receipt(r, seller="PT Penjual Yang Namanya Cukup Panjang Sekali (Persero) Tbk"))
    lines = text.splitlines()
    assert "PT Penjual Yang Namanya Cukup Panjang Sekali (Persero) Tbk" in lines  # smaller, whole
    [cut] = [line for line in lines if line.startswith("Siti Aminah")]
    assert cut.endswith("...") and len(cut) < len(long_name)
