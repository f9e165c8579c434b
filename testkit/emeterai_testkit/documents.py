"""Sample documents for tests and benchmarks, generated rather than shipped: good ones, and the
building blocks of the hostile corpus (documents that upload validation must refuse)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pikepdf
from pikepdf import Array, Dictionary, Name

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

def save(pdf: pikepdf.Pdf, **options: Any) -> bytes:
    out = io.BytesIO()
    pdf.save(out, **options)
    return out.getvalue()

def edited(change: Callable[[pikepdf.Pdf], None], pages: int = 3, **options: Any) -> bytes:
    pdf = pikepdf.open(io.BytesIO(sample_pdf(pages)))
    change(pdf)
    return save(pdf, **options)

def with_stream(encoded: bytes, *filters: str, copies: int = 1) -> bytes:
    """The sample with extra streams kept exactly as encoded (qpdf must not re-encode them on save)."""
    def change(pdf: pikepdf.Pdf) -> None:
        streams = []
        for _ in range(copies):
            stream = pikepdf.Stream(pdf, encoded)
            stream.Filter = Array([Name(f) for f in filters])
            streams.append(pdf.make_indirect(stream))
        pdf.Root.Extra = Array(streams)
    return edited(change, stream_decode_level=pikepdf.StreamDecodeLevel.none, compress_streams=False)

def pages_sharing_one_content(count: int, declared: int | None = None) -> bytes:
    pdf = pikepdf.new()
    content = pdf.make_stream(b"BT /F1 12 Tf 72 760 Td (Halaman) Tj ET")
    pages = pdf.Root.Pages
    kids = [pdf.make_indirect(Dictionary(Type=Name.Page, Parent=pages, MediaBox=[0, 0, 595, 842], Contents=content))
            for _ in range(count)]
    pages.Kids = Array(kids)
    pages.Count = count if declared is None else declared
    return save(pdf)

def nested(kind: str, depth: int) -> bytes:
    def change(pdf: pikepdf.Pdf) -> None:
        value: Any = 1
        for _ in range(depth):
            value = Array([value]) if kind == "array" else Dictionary(Inner=value)
        pdf.Root.Nested = pdf.make_indirect(value)
    return edited(change)

def object_stream_bomb(padding: bytes) -> bytes:
    """A one-page document whose page tree lives in an object stream padded with ``padding``."""
    pages = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>"
    header = b"2 0 3 %d " % (len(pages) + 1)
    compressed = zlib.compress(header + pages + b" " + page + padding, 9)
    out, offsets = bytearray(b"%PDF-1.7\n"), {}
    for number, body in (
        (1, b"<< /Type /Catalog /Pages 2 0 R >>"),
        (4, b"<< /Type /ObjStm /N 2 /First %d /Filter /FlateDecode /Length %d >>\nstream\n"
            % (len(header), len(compressed)) + compressed + b"\nendstream"),
    ):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    rows = [struct.pack(">BIH", 0, 0, 0xFFFF), struct.pack(">BIH", 1, offsets[1], 0), struct.pack(">BIH", 2, 4, 0),
            struct.pack(">BIH", 2, 4, 1), struct.pack(">BIH", 1, offsets[4], 0), struct.pack(">BIH", 1, xref_at, 0)]
    table = b"".join(rows)
    out += b"5 0 obj\n<< /Type /XRef /Size 6 /W [1 4 2] /Root 1 0 R /Length %d >>\nstream\n" % len(table)
    out += table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)

def encrypted(user: str) -> bytes:
    return edited(lambda pdf: None, encryption=pikepdf.Encryption(user=user, owner="owner-secret"))

def zero_pages() -> bytes:
    return save(pikepdf.new())


_PDF_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _literal_strings(content: bytes) -> list[bytes]:
    """The literal strings ``(...)`` of a content stream, unescaped (balanced parentheses, octal)."""
    found: list[bytes] = []
    i = 0
    while i < len(content):
        if content[i:i + 1] != b"(":
            i += 1
            continue
        depth, i, out = 1, i + 1, bytearray()
        while i < len(content) and depth:
            ch = content[i:i + 1]
            if ch == b"\\":
                nxt = content[i + 1:i + 2]
                if nxt and nxt in b"01234567":
                    end = i + 1
                    while end < min(i + 4, len(content)) and content[end] in b"01234567":
                        end += 1
                    out.append(int(content[i + 1:end], 8) & 0xFF)
                    i = end
                    continue
                out += _PDF_ESCAPES.get(nxt, nxt)
                i += 2
                continue
            if ch == b"(":
                depth += 1
            elif ch == b")":
                depth -= 1
                if not depth:
                    break
            out += ch
            i += 1
        found.append(bytes(out))
        i += 1
    return found


def pdf_text(data: bytes) -> list[str]:
    """The text lines drawn on each page of a PDF whose text is in uncompressed or Flate-encoded
    content streams with simple (WinAnsi) fonts, as reportlab writes them: opened with pyHanko's
    reader, one entry per page, the strings of the page in drawing order joined by newlines."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    reader = PdfFileReader(io.BytesIO(data), strict=False)
    pages: list[str] = []

    def walk(node: Any) -> None:
        if node["/Type"] == "/Pages":
            for kid in node["/Kids"]:
                walk(kid.get_object())
            return
        contents = node["/Contents"]
        streams = [item.get_object() for item in contents] if isinstance(contents, list) else [contents]
        raw = b"\n".join(stream.data for stream in streams)
        pages.append("\n".join(s.decode("cp1252", errors="replace") for s in _literal_strings(raw)))

    walk(reader.root["/Pages"])
    return pages
