"""The receipt as a one-page A4 PDF (reportlab), in Indonesian with English subtitles.

Pure: facts in, bytes out. The output is deterministic (``invariant``: no creation date or random
document id) and its page content is not compressed, so the same receipt gives the same bytes and
its text can be read back by tests. A receipt is small (a few kB), so it is drawn on request and
never cached. Serials and refunds beyond what one page holds are summarised ("... and N more"),
and a line too long for the page is set smaller, then cut: the JSON form always has everything.
Standard PDF fonts are used (nothing to ship): they draw Latin script (Windows-1252), so a name
in another script prints without those letters.
"""

from __future__ import annotations

import io

from reportlab.lib.colors import Color, black
from reportlab.lib.pagesizes import A4
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from order_service.domain.receipt import Receipt, ReceiptRefund, rupiah, wib

GREY = Color(0.4, 0.4, 0.4)
MARGIN = 50.0
WIDTH, HEIGHT = A4
VALUE_X = 260.0
MIN_SIZE = 7.0
SERIAL_COLUMNS = 3
SERIAL_ROWS = 12
"""At most 36 serials are printed; more are summarised."""
REFUND_ROWS = 4

METHODS = {"va": "Virtual Account (VA)", "qris": "QRIS"}
REFUND_STATUS = {"REQUESTED": "diajukan", "PENDING": "diproses", "REFUNDED": "dikembalikan",
                 "COMPLETED": "dikembalikan", "FAILED": "gagal", "PAYING": "diproses", "PAID_OUT": "dikembalikan"}


class _Page:
    """A cursor down one page: each call draws one line (one text object per line)."""

    def __init__(self, canvas: Canvas):
        self.c = canvas
        self.y = HEIGHT - MARGIN

    def text(self, x: float, text: str, *, size: float = 10, bold: bool = False, grey: bool = False,
             advance: float | None = None) -> None:
        """Draw one line; a line too long for the page shrinks (down to 7 pt), then is cut with "...". """
        font = "Helvetica-Bold" if bold else "Helvetica"
        room = WIDTH - MARGIN - x
        while size > MIN_SIZE and stringWidth(text, font, size) > room:
            size = max(MIN_SIZE, size - 0.5)
        if stringWidth(text, font, size) > room:
            while text and stringWidth(text + "...", font, size) > room:
                text = text[:-1]
            text += "..."
        self.c.setFont(font, size)
        self.c.setFillColor(GREY if grey else black)
        self.c.drawString(x, self.y, text)
        if advance is not None:
            self.y -= advance

    def row(self, label: str, subtitle: str, value: str, *, bold: bool = False) -> None:
        """An Indonesian label with its English subtitle under it, the value beside the label."""
        self.text(MARGIN, label, bold=True)
        self.text(VALUE_X, value, bold=bold, advance=10)
        self.text(MARGIN, subtitle, size=7.5, grey=True, advance=12)

    def heading(self, label: str, subtitle: str) -> None:
        self.y -= 4
        self.c.setStrokeColor(GREY)
        self.c.line(MARGIN, self.y + 13, WIDTH - MARGIN, self.y + 13)
        self.text(MARGIN, label, size=11, bold=True, advance=10)
        self.text(MARGIN, subtitle, size=7.5, grey=True, advance=13)


def render_receipt(receipt: Receipt, *, seller: str) -> bytes:
    out = io.BytesIO()
    canvas = Canvas(out, pagesize=A4, invariant=1, pageCompression=0)
    canvas.setTitle(f"Kwitansi {receipt.receipt_no}")
    canvas.setAuthor(seller)
    canvas.setSubject(f"Receipt of order {receipt.order_id}")
    page = _Page(canvas)

    page.text(MARGIN, "KWITANSI PEMBAYARAN E-METERAI", size=16, bold=True, advance=14)
    page.text(MARGIN, "e-Meterai payment receipt", size=9, grey=True, advance=24)
    page.row("Penjual", "Seller", seller)
    page.row("Nomor kwitansi", "Receipt no.", receipt.receipt_no, bold=True)
    page.row("Nomor pesanan", "Order ID", str(receipt.order_id))
    page.row("Pembeli", "Buyer", receipt.buyer)
    page.row("Akun pembeli", "Buyer account", str(receipt.account_id))
    page.row("Waktu pembayaran", "Paid at (Western Indonesia Time)", wib(receipt.paid_at))

    page.heading("Rincian pembayaran", "Payment details")
    page.row("Jumlah meterai", "Quantity (stamps)", str(receipt.quantity))
    page.row("Bea meterai", "Stamp duty",
             f"{rupiah(receipt.duty_per_stamp)} x {receipt.quantity} = {rupiah(receipt.duty)}")
    page.row("Biaya layanan", "Service fee", rupiah(receipt.fee))
    page.row("Total dibayar", "Total paid", rupiah(receipt.total), bold=True)
    payment = receipt.payment
    page.row("Metode pembayaran", "Payment method", METHODS.get(payment.method, payment.method))
    page.row("Bank", "Bank", payment.bank or "-")
    if payment.virtual_account_no:
        page.row("Nomor virtual account", "Virtual account no.", payment.virtual_account_no)
    page.row("Referensi bank", "Bank reference", payment.reference or "-")
    if payment.payment_request_id and payment.payment_request_id != payment.reference:
        page.row("ID permintaan pembayaran", "Payment request ID", payment.payment_request_id)

    page.heading("Nomor seri meterai", "Stamp serial numbers")
    _serials(page, receipt.serials)

    page.heading("Pengembalian dana", "Refunds")
    _refunds(page, receipt.refunds)

    page.y = MARGIN + 12
    page.text(MARGIN, "Kwitansi ini dibuat secara elektronik dan sah tanpa tanda tangan.", size=8, advance=10)
    page.text(MARGIN, "This receipt is issued electronically and is valid without a signature.", size=7.5, grey=True)
    canvas.showPage()
    canvas.save()
    return out.getvalue()


def _serials(page: _Page, serials: list[str]) -> None:
    if not serials:
        page.text(MARGIN, "Belum diterbitkan", advance=10)
        page.text(MARGIN, "Not issued yet", size=7.5, grey=True, advance=15)
        return
    shown = serials[: SERIAL_COLUMNS * SERIAL_ROWS]
    column_width = (WIDTH - 2 * MARGIN) / SERIAL_COLUMNS
    for start in range(0, len(shown), SERIAL_COLUMNS):
        for i, sn in enumerate(shown[start:start + SERIAL_COLUMNS]):
            page.text(MARGIN + i * column_width, sn, size=9)
        page.y -= 11
    if len(serials) > len(shown):
        more = len(serials) - len(shown)
        page.text(MARGIN, f"... dan {more} lainnya / and {more} more (lihat / see JSON)", size=8, grey=True,
                  advance=12)
    page.y -= 3


def _refunds(page: _Page, refunds: list[ReceiptRefund]) -> None:
    if not refunds:
        page.text(MARGIN, "Tidak ada", advance=10)
        page.text(MARGIN, "None", size=7.5, grey=True, advance=15)
        return
    for refund in refunds[:REFUND_ROWS]:
        status = REFUND_STATUS.get(refund.status, refund.status.lower())
        what = ("seluruh pesanan / whole order" if refund.kind == "order"
                else f"{len(refund.serials)} meterai / stamps")
        page.text(MARGIN, f"{rupiah(refund.amount)} - {what} - {status} ({refund.status})", size=9, advance=10)
        reference = f" - Ref. {refund.reference}" if refund.reference else ""
        page.text(MARGIN + 10, f"ID {refund.refund_id}: {', '.join(refund.serials[:3])}"
                               f"{' ...' if len(refund.serials) > 3 else ''}{reference}", size=7.5, grey=True,
                  advance=13)
    if len(refunds) > REFUND_ROWS:
        more = len(refunds) - REFUND_ROWS
        page.text(MARGIN, f"... dan {more} lainnya / and {more} more (lihat / see JSON)", size=8, grey=True,
                  advance=12)
    total = sum(r.amount for r in refunds)
    page.text(MARGIN, f"Jumlah dikembalikan / Total refunded: {rupiah(total)}", size=9, bold=True, advance=12)
