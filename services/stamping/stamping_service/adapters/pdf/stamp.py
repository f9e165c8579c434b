"""Affix the e-meterai: a visible PAdES signature appended as an incremental update.

The update leaves every earlier byte, hence every earlier signature, untouched. The signature
space is reserved from the size of the certificates instead of letting pyHanko size it with a
throwaway signature (which signs every document twice); with a timestamp authority, whose token
size is unknown, pyHanko's estimate is used. ``stamp_pdf`` is CPU-bound and runs pyHanko's own
event loop: call it in a worker process, never on an event loop thread. Documents are expected to
have passed ``inspect_pdf`` first.
"""

from __future__ import annotations

import io
import re

from pyhanko.pdf_utils.crypt import AuthStatus
from pyhanko.pdf_utils.generic import ArrayObject
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.rw_common import find_inherited_value_in_tree
from pyhanko.sign.fields import SigFieldSpec, SigSeedSubFilter
from pyhanko.sign.signers import PdfSignatureMetadata, PdfSigner, Signer
from pyhanko.sign.timestamps import TimeStamper

from stamping_service.adapters.pdf import geometry
from stamping_service.adapters.pdf.appearance import MeteraiStyle

SERIAL = re.compile(r"[0-9A-Z]{22}")
CMS_OVERHEAD = 4096
"""Bytes of the CMS container besides certificates: signed attributes, signature value, structure."""


def field_name(sn: str) -> str:
    """The name of the signature field that carries the stamp with this serial."""
    return f"Meterai-{sn}"


def reserved_bytes(signer: Signer) -> int:
    """Hex digits to reserve for a signature by ``signer`` without a timestamp token."""
    certificates = [signer.signing_cert, *signer.cert_registry]
    return 2 * (sum(len(c.dump()) for c in certificates if c is not None) + CMS_OVERHEAD)


def stamp_pdf(
    data: bytes, *, password: str | None, page: int, x: float, y: float, size: float,
    sn: str, token: str, reason: str, signer: Signer, timestamper: TimeStamper | None = None,
) -> bytes:
    """The stamped document: ``page`` 1-based, the square of ``size`` points at (x, y) as in the contract."""
    if not SERIAL.fullmatch(sn):
        raise ValueError(f"not a serial number: {sn!r}")
    if page < 1:
        raise ValueError(f"pages are numbered from 1, not {page}")
    writer = IncrementalPdfFileWriter(io.BytesIO(data), strict=False)
    if writer.prev.encrypted and writer.encrypt(password or "").status == AuthStatus.FAILED:
        raise ValueError("wrong password for the encrypted document")
    page_ref, _ = writer.find_page_for_modification(page - 1)
    page_obj = page_ref.get_object()
    crop = find_inherited_value_in_tree(page_obj, "/CropBox", "/Parent")
    box = geometry.visible_box(
        geometry.normalized(find_inherited_value_in_tree(page_obj, "/MediaBox", "/Parent")),
        geometry.normalized(crop) if isinstance(crop, ArrayObject) else None,
    )
    rotation = geometry.rotation(find_inherited_value_in_tree(page_obj, "/Rotate", "/Parent") or 0)
    rect = geometry.stamp_rect(box, rotation, x, y, size)
    if rect is None:
        raise ValueError(f"the stamp does not fit on page {page}")
    name = field_name(sn)
    pdf_signer = PdfSigner(
        PdfSignatureMetadata(field_name=name, md_algorithm="sha256", subfilter=SigSeedSubFilter.PADES,
                             reason=f"[{sn}] {reason}"),
        signer,
        timestamper=timestamper,
        stamp_style=MeteraiStyle(rotation=rotation),
        new_field_spec=SigFieldSpec(sig_field_name=name, on_page=page - 1, box=rect),  # type: ignore[arg-type]
    )
    output = pdf_signer.sign_pdf(
        writer,
        bytes_reserved=None if timestamper is not None else reserved_bytes(signer),
        appearance_text_params={"sn": sn, "token": token},
    )
    stamped: bytes = output.getvalue()
    return stamped
