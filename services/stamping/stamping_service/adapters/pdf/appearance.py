"""The visible e-meterai: a pyHanko stamp style drawing the stamp as vector graphics.

Drawn in a 100 x 100 design square scaled to the widget: an emblem placeholder (a gold disc with a
star; no Garuda artwork is shipped), "METERAI ELEKTRONIK", the QR code holding the minting token,
"10000", "SEPULUH RIBU RUPIAH" and the serial. Everything but the QR code and the serial is the
same on every stamp, so it is rendered once at import. Fonts are the standard Helvetica-Bold and
Courier-Bold (not embedded). The QR code is one byte-mode segment, so its version follows from the
token's length alone and is computed once per length, and it uses a fixed mask pattern: picking
the best of the eight by penalty score costs about 25 ms per stamp in pure Python, and every mask
decodes alike.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import qrcode
from pyhanko.pdf_utils import generic, layout
from pyhanko.pdf_utils.content import ResourceType
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.writer import BasePdfFileWriter
from pyhanko.stamp import BaseStamp, BaseStampStyle

RED = b"0.70 0.09 0.17"
GOLD = b"0.83 0.64 0.15"
QR_X, QR_Y, QR_SIDE = 6.0, 22.0, 50.0
QR_MASK = 0

_HELVETICA_BOLD_WIDTHS = dict(zip(
    " 0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    [278] + [556] * 10 + [722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833,
                          722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611],
    strict=True,
))
"""Advance widths (1/1000 em) of the standard Helvetica-Bold font, for centering fixed texts."""


def _centered(text: str, size: float, center: float, baseline: float) -> bytes:
    width = sum(_HELVETICA_BOLD_WIDTHS[c] for c in text) * size / 1000
    return b"BT /MeteraiBold %g Tf %g %g Td (%s) Tj ET" % (size, center - width / 2, baseline, text.encode())


def _circle(cx: float, cy: float, r: float) -> bytes:
    k = 0.5523 * r
    return (b"%g %g m %g %g %g %g %g %g c %g %g %g %g %g %g c %g %g %g %g %g %g c %g %g %g %g %g %g c h"
            % (cx + r, cy, cx + r, cy + k, cx + k, cy + r, cx, cy + r, cx - k, cy + r, cx - r, cy + k,
               cx - r, cy, cx - r, cy - k, cx - k, cy - r, cx, cy - r, cx + k, cy - r, cx + r, cy - k, cx + r, cy))


def _star(cx: float, cy: float, outer: float, inner: float) -> bytes:
    points = [(cx + (outer if i % 2 == 0 else inner) * math.cos(math.pi / 2 + i * math.pi / 5),
               cy + (outer if i % 2 == 0 else inner) * math.sin(math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    return b"%.2f %.2f m " % points[0] + b" ".join(b"%.2f %.2f l" % p for p in points[1:]) + b" h"


STATIC_CONTENT = b" ".join([
    b"1 1 1 rg 0 0 100 100 re f",
    RED + b" RG 2.4 w 1.2 1.2 97.6 97.6 re S",
    GOLD + b" rg " + _circle(14, 86, 9) + b" f",
    b"1 1 1 rg " + _star(14, 86, 6.5, 2.6) + b" f",
    RED + b" rg",
    _centered("METERAI", 9, 60.5, 88),
    _centered("ELEKTRONIK", 9, 60.5, 79),
    _centered("10000", 13, 77.5, 42.5),
    _centered("SEPULUH RIBU RUPIAH", 6.2, 50, 13),
])
"""Drawing operators of everything that is the same on every stamp, in the 100 x 100 design square."""


@functools.lru_cache(maxsize=64)
def _qr_version(length: int) -> int:
    """The smallest QR version holding ``length`` bytes in one byte-mode segment."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(b"\0" * length, optimize=0)
    return int(code.best_fit())


def qr_content(token: str) -> bytes:
    """The QR code of ``token`` as filled rectangles (one per run of dark modules) in the design square."""
    data = token.encode()
    code = qrcode.QRCode(version=_qr_version(len(data)), error_correction=qrcode.constants.ERROR_CORRECT_M,
                         border=0, mask_pattern=QR_MASK)
    code.add_data(data, optimize=0)
    code.make(fit=False)
    matrix = code.get_matrix()
    n = len(matrix)
    runs = []
    for row_index, row in enumerate(matrix):
        column = 0
        while column < n:
            start = column
            while column < n and row[column]:
                column += 1
            if column > start:
                runs.append(b"%d %d %d 1 re" % (start, n - 1 - row_index, column - start))
            column += 1
    module = QR_SIDE / n
    return b"q 0 0 0 rg %g 0 0 %g %g %g cm %s f Q" % (module, module, QR_X, QR_Y, b" ".join(runs))


def _font(base_font: str) -> generic.DictionaryObject:
    return generic.DictionaryObject({
        pdf_name("/Type"): pdf_name("/Font"), pdf_name("/Subtype"): pdf_name("/Type1"),
        pdf_name("/BaseFont"): pdf_name(base_font), pdf_name("/Encoding"): pdf_name("/WinAnsiEncoding"),
    })


_COUNTER_ROTATION = {90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}


@dataclass(frozen=True)
class MeteraiStyle(BaseStampStyle):
    """The e-meterai; ``rotation`` is the page's ``/Rotate``, undone so that the stamp reads upright."""

    rotation: int = 0

    def create_stamp(
        self, writer: BasePdfFileWriter, box: layout.BoxConstraints, text_params: dict[str, str],
    ) -> MeteraiStamp:
        return MeteraiStamp(writer, self, box, sn=text_params["sn"], token=text_params["token"])


class MeteraiStamp(BaseStamp):
    def __init__(self, writer: BasePdfFileWriter, style: MeteraiStyle, box: layout.BoxConstraints, *,
                 sn: str, token: str):
        super().__init__(writer, style, box)
        self.sn = sn
        self.token = token
        self.set_resource(ResourceType.FONT, pdf_name("/MeteraiBold"), _font("/Helvetica-Bold"))
        self.set_resource(ResourceType.FONT, pdf_name("/MeteraiMono"), _font("/Courier-Bold"))

    def render(self) -> bytes:
        serial_size = 5.4
        serial_width = len(self.sn) * 0.6 * serial_size  # Courier: every glyph is 600/1000 em wide
        serial = b"0 0 0 rg BT /MeteraiMono %g Tf %g 5.5 Td (%s) Tj ET" % (
            serial_size, 50 - serial_width / 2, self.sn.encode())
        return b"q %g 0 0 %g 0 0 cm %s %s %s Q" % (
            self.box.width / 100, self.box.height / 100, STATIC_CONTENT, qr_content(self.token), serial)

    def as_form_xobject(self) -> generic.StreamObject:
        xobject = super().as_form_xobject()
        rotation = self.style.rotation
        if rotation:
            xobject[pdf_name("/Matrix")] = generic.ArrayObject(
                generic.NumberObject(v) for v in (*_COUNTER_ROTATION[rotation], 0, 0))
        return xobject
