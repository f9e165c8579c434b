"""Upload validation: a hostile corpus, each refused with its own code, and what is accepted."""

from __future__ import annotations

import base64
import math
import pickle
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pikepdf
import pytest
from emeterai_testkit.documents import (
    edited,
    encrypted,
    nested,
    object_stream_bomb,
    pages_sharing_one_content,
    sample_pdf,
    with_stream,
    zero_pages,
)
from pikepdf import Array, Dictionary, Name, String, settings
from stamping_service.adapters.pdf import Inspection, Limits, PdfRejected, RejectCode, geometry, inspect_pdf
from stamping_service.adapters.pdf.decode import decoded_size

MiB = 1024 * 1024


def lzw_encode(data: bytes) -> bytes:
    """A plain LZW encoder (``/EarlyChange 1``), to feed the decoder something qpdf also reads."""
    def fresh() -> tuple[dict[bytes, int], int, int]:
        return {bytes((i,)): i for i in range(256)}, 258, 9
    table, next_code, width = fresh()
    codes, current = [(256, 9)], b""
    for value in data:
        candidate = current + bytes((value,))
        if candidate in table:
            current = candidate
            continue
        codes.append((table[current], width))
        table[candidate] = next_code
        next_code += 1
        if next_code == 4000:
            codes.append((256, width))
            table, next_code, width = fresh()
        elif next_code >= 1 << width:
            width += 1
        current = bytes((value,))
    codes += [(table[current], width), (257, width)]
    buffer = bits = 0
    out = bytearray()
    for code, size in codes:
        buffer, bits = (buffer << size) | code, bits + size
        while bits >= 8:
            bits -= 8
            out.append((buffer >> bits) & 0xFF)
    return bytes(out) + (bytes([(buffer << (8 - bits)) & 0xFF]) if bits else b"")


def _javascript_open_action(pdf: pikepdf.Pdf) -> None:
    pdf.Root.OpenAction = Dictionary(S=Name.JavaScript, JS=String("app.alert('hi')"))


def _launch_link(pdf: pikepdf.Pdf) -> None:
    pdf.pages[0].Annots = Array([pdf.make_indirect(Dictionary(
        Type=Name.Annot, Subtype=Name.Link, Rect=[72, 72, 200, 100],
        A=Dictionary(S=Name.Launch, F=String("calc.exe"))))])


def _page_additional_actions(pdf: pikepdf.Pdf) -> None:
    pdf.pages[1].AA = Dictionary(O=Dictionary(S=Name.GoTo, D=Array([pdf.pages[0].obj, Name.Fit])))


def _javascript_name_tree(pdf: pikepdf.Pdf) -> None:
    pdf.Root.Names = Dictionary(JavaScript=Dictionary(Names=Array([String("init"), pdf.make_indirect(
        Dictionary(S=Name.JavaScript, JS=String("this.print()")))])))


def _javascript_after_goto(pdf: pikepdf.Pdf) -> None:
    pdf.Root.OpenAction = Dictionary(S=Name.GoTo, D=Array([pdf.pages[0].obj, Name.Fit]),
                                     Next=Dictionary(S=Name.JavaScript, JS=String("app.launchURL('x')")))


def _xfa_form(pdf: pikepdf.Pdf) -> None:
    pdf.Root.AcroForm = Dictionary(Fields=Array(), XFA=pdf.make_stream(b"<xdp:xdp/>"))


def _a85(data: bytes) -> bytes:
    return base64.a85encode(data) + b"~>"


GOOD = sample_pdf(3)
ZEROS = b"\0" * (2 * MiB)

REFUSALS: list[tuple[str, Callable[[], bytes], dict[str, Any], RejectCode]] = [
    ("oversized", lambda: GOOD + b" " * (4 * MiB), {}, RejectCode.TOO_LARGE),
    ("custom size limit", lambda: GOOD, {"limits": Limits(max_bytes=800)}, RejectCode.TOO_LARGE),
    ("zip bytes", lambda: b"PK\x03\x04" + bytes(100), {}, RejectCode.NOT_A_PDF),
    ("header after 1024 bytes", lambda: b" " * 1100 + GOOD, {}, RejectCode.NOT_A_PDF),
    ("empty", lambda: b"", {}, RejectCode.NOT_A_PDF),
    ("truncated in the middle", lambda: GOOD[: len(GOOD) // 2], {}, RejectCode.UNREADABLE),
    ("trailer cut off", lambda: GOOD[:-40], {}, RejectCode.UNREADABLE),
    ("junk before the header", lambda: b"JUNK-JUNK\n" + GOOD, {}, RejectCode.UNREADABLE),
    ("header then garbage", lambda: b"%PDF-1.7\n" + bytes(range(256)) * 8, {}, RejectCode.UNREADABLE),
    ("encrypted, no password", lambda: encrypted("rahasia"), {}, RejectCode.ENCRYPTED),
    ("encrypted, wrong password", lambda: encrypted("rahasia"), {"password": "salah"}, RejectCode.ENCRYPTED),
    ("3000 pages", lambda: pages_sharing_one_content(3000), {}, RejectCode.TOO_MANY_PAGES),
    ("3000 pages declared as 1", lambda: pages_sharing_one_content(3000, declared=1), {},
     RejectCode.TOO_MANY_PAGES),
    ("too many objects", lambda: sample_pdf(40), {"limits": Limits(max_objects=50)}, RejectCode.TOO_MANY_OBJECTS),
    ("arrays 200 deep", lambda: nested("array", 200), {}, RejectCode.TOO_DEEPLY_NESTED),
    ("dictionaries 200 deep", lambda: nested("dict", 200), {}, RejectCode.TOO_DEEPLY_NESTED),
    ("70 MiB of zeros in Flate", lambda: with_stream(zlib.compress(b"\0" * (70 * MiB), 9), "/FlateDecode"), {},
     RejectCode.DECOMPRESSION_BOMB),
    ("Flate inside Flate", lambda: with_stream(zlib.compress(zlib.compress(b"\0" * (20 * MiB), 9), 9),
                                                "/FlateDecode", "/FlateDecode"), {}, RejectCode.DECOMPRESSION_BOMB),
    ("LZW", lambda: with_stream(lzw_encode(ZEROS[: MiB // 2]), "/LZWDecode"),
     {"limits": Limits(max_decoded_bytes=MiB // 4)}, RejectCode.DECOMPRESSION_BOMB),
    ("RunLength", lambda: with_stream(b"\x81\0" * 20_000 + b"\x80", "/RunLengthDecode"),
     {"limits": Limits(max_decoded_bytes=MiB)}, RejectCode.DECOMPRESSION_BOMB),
    ("ASCII85 of Flate", lambda: with_stream(_a85(zlib.compress(ZEROS, 9)), "/ASCII85Decode", "/FlateDecode"),
     {"limits": Limits(max_decoded_bytes=MiB)}, RejectCode.DECOMPRESSION_BOMB),
    ("many streams together", lambda: with_stream(zlib.compress(ZEROS, 9), "/FlateDecode", copies=20),
     {"limits": Limits(max_total_decoded_bytes=16 * MiB)}, RejectCode.DECOMPRESSION_BOMB),
    ("object stream bomb", lambda: object_stream_bomb(b" " * (80 * MiB)), {}, RejectCode.DECOMPRESSION_BOMB),
    ("object stream past the signer's limits", lambda: object_stream_bomb(bytes(range(32, 127)) * 110_000), {},
     RejectCode.DECOMPRESSION_BOMB),
    ("zero pages", zero_pages, {}, RejectCode.NO_PAGES),
    ("page 0", lambda: GOOD, {"page": 0}, RejectCode.PAGE_OUT_OF_RANGE),
    ("page 4 of 3", lambda: GOOD, {"page": 4}, RejectCode.PAGE_OUT_OF_RANGE),
    ("past the right edge", lambda: GOOD, {"x": 500}, RejectCode.STAMP_OUTSIDE_PAGE),
    ("below the page", lambda: GOOD, {"y": -1}, RejectCode.STAMP_OUTSIDE_PAGE),
    ("past the top", lambda: GOOD, {"y": 800}, RejectCode.STAMP_OUTSIDE_PAGE),
    ("zero size", lambda: GOOD, {"size": 0}, RejectCode.STAMP_OUTSIDE_PAGE),
    ("NaN position", lambda: GOOD, {"x": math.nan}, RejectCode.STAMP_OUTSIDE_PAGE),
    ("too high on a landscape-rotated page", lambda: edited(lambda pdf: setattr(pdf.Root.Pages, "Rotate", 90)),
     {"x": 50, "y": 520}, RejectCode.STAMP_OUTSIDE_PAGE),
    ("JavaScript open action", lambda: edited(_javascript_open_action), {}, RejectCode.ACTIVE_CONTENT),
    ("launch link", lambda: edited(_launch_link), {}, RejectCode.ACTIVE_CONTENT),
    ("page additional actions", lambda: edited(_page_additional_actions), {}, RejectCode.ACTIVE_CONTENT),
    ("JavaScript name tree", lambda: edited(_javascript_name_tree), {}, RejectCode.ACTIVE_CONTENT),
    ("JavaScript after a GoTo", lambda: edited(_javascript_after_goto), {}, RejectCode.ACTIVE_CONTENT),
    ("XFA form", lambda: edited(_xfa_form), {}, RejectCode.ACTIVE_CONTENT),
]


def _inspect(data: bytes, **overrides: Any) -> Inspection:
    arguments: dict[str, Any] = {"password": None, "page": 1, "x": 400.0, "y": 50.0, "size": 100.0,
                                 "limits": Limits()}
    return inspect_pdf(data, **{**arguments, **overrides})


@pytest.mark.parametrize(("build", "overrides", "code"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_hostile_documents_are_refused_with_their_own_code(
    build: Callable[[], bytes], overrides: dict[str, Any], code: RejectCode,
) -> None:
    with pytest.raises(PdfRejected) as refused:
        _inspect(build(), **overrides)
    assert refused.value.code is code, refused.value.message
    assert refused.value.message


def test_a_page_tree_in_an_object_stream_is_read() -> None:
    assert _inspect(object_stream_bomb(b""), x=0, y=0).pages == 1


def test_a_plain_multi_page_document_is_described() -> None:
    assert _inspect(GOOD, page=2) == Inspection(
        pages=3, page_width=595, page_height=842, rotation=0, stamp_rect=(400, 50, 500, 150),
        signed=False, encrypted=False, pdf_version="1.3")


def test_passive_actions_are_allowed() -> None:
    def change(pdf: pikepdf.Pdf) -> None:
        pdf.Root.OpenAction = Array([pdf.pages[0].obj, Name.Fit])
        pdf.pages[0].Annots = Array([pdf.make_indirect(Dictionary(
            Type=Name.Annot, Subtype=Name.Link, Rect=[72, 72, 200, 100],
            A=Dictionary(S=Name.URI, URI=String("https://sscasn.bkn.go.id"))))])
    assert _inspect(edited(change)).pages == 3


def test_encrypted_documents_open_with_their_password() -> None:
    assert _inspect(encrypted("rahasia"), password="rahasia").encrypted
    assert _inspect(encrypted(""), password=None).encrypted  # owner password only: no password needed


def test_the_stamp_box_follows_an_inherited_rotation_and_media_box() -> None:
    def change(pdf: pikepdf.Pdf) -> None:
        pdf.Root.Pages.Rotate = 90
        pdf.Root.Pages.MediaBox = Array([0, 0, 595, 842])
        for page in pdf.pages:
            del page.obj["/MediaBox"]
    inspection = _inspect(edited(change), x=700, y=20, size=100)
    assert (inspection.page_width, inspection.page_height, inspection.rotation) == (842, 595, 90)
    assert inspection.stamp_rect == (475, 700, 575, 800)


def test_the_stamp_box_is_measured_from_the_crop_box() -> None:
    def change(pdf: pikepdf.Pdf) -> None:
        pdf.pages[0].CropBox = Array([50, 60, 545, 792])
    inspection = _inspect(edited(change), x=0, y=0, size=100)
    assert (inspection.page_width, inspection.page_height) == (495, 732)
    assert inspection.stamp_rect == (50, 60, 150, 160)


def test_the_catalog_version_wins_over_the_header() -> None:
    assert _inspect(edited(lambda pdf: setattr(pdf.Root, "Version", Name("/1.7")))).pdf_version == "1.7"


def test_qpdf_limits_are_restored_after_each_call() -> None:
    before = settings.get_qpdf_limits()
    _inspect(GOOD)
    with pytest.raises(PdfRejected):
        _inspect(nested("array", 200))
    assert settings.get_qpdf_limits() == before


def test_inspection_runs_in_a_process_pool() -> None:
    refusal = PdfRejected(RejectCode.ACTIVE_CONTENT, "message")
    assert pickle.loads(pickle.dumps(refusal)).code is RejectCode.ACTIVE_CONTENT
    with ProcessPoolExecutor(max_workers=1) as pool:
        accepted = pool.submit(inspect_pdf, GOOD, password=None, page=3, x=0, y=0, size=100, limits=Limits())
        refused = pool.submit(inspect_pdf, edited(_launch_link), password=None, page=1, x=0, y=0, size=100,
                              limits=Limits())
        assert accepted.result(timeout=60).pages == 3
        with pytest.raises(PdfRejected) as error:
            refused.result(timeout=60)
    assert error.value.code is RejectCode.ACTIVE_CONTENT


TEXT = b"Surat lamaran " * 500 + bytes(range(256)) * 4
ENCODINGS: list[tuple[list[str], bytes]] = [
    (["/FlateDecode"], zlib.compress(TEXT)),
    (["/LZWDecode"], lzw_encode(TEXT)),
    (["/RunLengthDecode"], b"\x02abc\xfeX\x00Y\x81Z\x80"),
    (["/ASCIIHexDecode"], b"48 65 6c\n6c 6f 7>ignored"),
    (["/ASCII85Decode"], base64.a85encode(b"\0\0\0\0" * 10 + TEXT) + b"~>"),
    (["/ASCII85Decode", "/FlateDecode"], _a85(zlib.compress(TEXT))),
    (["/FlateDecode", "/RunLengthDecode"], zlib.compress(b"\xfd7\x80")),
]


@pytest.mark.parametrize(("filters", "encoded"), ENCODINGS, ids=["+".join(e[0]) for e in ENCODINGS])
def test_bounded_decoders_agree_with_qpdf(filters: list[str], encoded: bytes) -> None:
    pdf = pikepdf.new()
    stream = pikepdf.Stream(pdf, encoded)
    stream.Filter = Array([Name(f) for f in filters])
    assert decoded_size(encoded, filters, cap=MiB) == len(stream.read_bytes(pikepdf.StreamDecodeLevel.specialized))


def test_undecodable_data_and_image_filters_end_the_chain() -> None:
    assert decoded_size(b"not zlib data", ["/FlateDecode"], cap=MiB) == 13
    assert decoded_size(zlib.compress(b"x" * 5000), ["/FlateDecode", "/DCTDecode"], cap=MiB) == 5000


@pytest.mark.parametrize("rotate", [0, 90, 180, 270, -90, 45])
def test_the_stamp_square_is_where_the_reader_sees_it_on_a_turned_page(rotate: int) -> None:
    box = (10.0, 20.0, 610.0, 820.0)  # 600 x 800 in user space
    turned = geometry.rotation(rotate)
    rect = geometry.stamp_rect(box, turned, 30, 40, 50)
    assert rect is not None
    width, height = 600, 800
    def shown(u: float, v: float) -> tuple[float, float]:  # user space -> displayed, turning clockwise
        return {0: (u, v), 90: (v, width - u), 180: (width - u, height - v), 270: (height - v, u)}[turned]
    corners = [shown(u - box[0], v - box[1]) for u in (rect[0], rect[2]) for v in (rect[1], rect[3])]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    assert (min(xs), min(ys), max(xs), max(ys)) == (30, 40, 80, 90)
    assert geometry.displayed_size(box, turned) == ((800, 600) if turned in (90, 270) else (600, 800))
