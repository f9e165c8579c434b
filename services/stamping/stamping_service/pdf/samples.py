"""Sample documents for tests and benchmarks, generated rather than shipped."""

from __future__ import annotations

import io

import pikepdf
from pikepdf import Dictionary, Name

A4 = (595, 842)


def sample_pdf(pages: int = 3) -> bytes:
    """An A4 document with a few lines of text on each page."""
    pdf = pikepdf.new()
    font = pdf.make_indirect(Dictionary(Type=Name.Font, Subtype=Name.Type1, BaseFont=Name.Helvetica))
    for number in range(1, pages + 1):
        page = pdf.add_blank_page(page_size=A4)
        page.Resources = Dictionary(Font=Dictionary(F1=font))
        lines = [b"Surat Lamaran CASN 2024", b"Halaman %d dari %d" % (number, pages), b"Hormat saya, Pelamar"]
        text = b" 0 -24 Td ".join(b"(%s) Tj" % line for line in lines)
        page.Contents = pdf.make_stream(b"BT /F1 12 Tf 72 760 Td " + text + b" ET")
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()
