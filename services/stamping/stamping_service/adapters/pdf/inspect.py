"""Validate an uploaded PDF before a serial is reserved: refuse it with a stable code, or describe it.

Run ``inspect_pdf`` in a ``ProcessPoolExecutor`` and bound it there with ``limits.parse_timeout_s``
(``asyncio.wait_for`` around ``run_in_executor``); a worker that overruns is stuck in native code
and must be replaced (shut the pool down and start a new one), since a running call cannot be
cancelled. Inside, the file is parsed by qpdf (pikepdf) under qpdf's own limits (nesting depth,
memory per Flate/RunLength/predictor decode), so the parser itself never inflates a bomb; those
limits are process-wide settings, set for the call and restored after it, which is why the call
belongs in a worker process and not in a thread.

Policy:

- Size and content sniffing come first (``too_large``, ``not_a_pdf``: ``%PDF-`` within the first
  1024 bytes, whatever the file is called).
- A file whose cross-reference data is damaged is ``unreadable``: the stamp is an incremental
  update appended to the original bytes, and a signature over a file that viewers must repair
  is worthless. The file must also open in pyHanko's reader, which writes that update.
- ``encrypted``: the password is missing or wrong. A file with an empty user password (an
  owner password only) opens without one; the stamped file stays encrypted the same way.
- Every stream is decoded with a cap (see ``decode``): ``decompression_bomb`` when one stream
  decodes past ``max_decoded_bytes``, or past ``max_decode_ratio`` times its encoded size once it
  is above 1 MiB, or when all streams together pass ``max_total_decoded_bytes``. When qpdf cannot
  even open the file (a bomb in the object stream holding the page tree), its raw streams are
  inflated under the cap to tell a bomb from plain damage.
- ``active_content``: JavaScript and other actions that run code are refused, since a stamped
  document is final and must not run code. Refused anywhere in the file: an action of type
  ``/JavaScript``, ``/Launch``, ``/ImportData`` or ``/RichMediaExecute`` (including as an
  ``/OpenAction``, a link, a bookmark or a ``/Next`` step), any ``/JS`` entry, any ``/AA``
  (additional actions, which fire on their own), a ``/JavaScript`` name tree and XFA forms
  (scripted). Passive actions (GoTo, URI links, named actions) are allowed.
- The stamp square must lie inside the page as displayed (see ``geometry``): ``stamp_outside_page``.
- Already signed documents are accepted (the stamp is an incremental update that keeps earlier
  signatures valid), except when certified with "no changes allowed" (DocMDP P=1), which any
  stamp would break: ``certified_no_changes``.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import pikepdf
from pikepdf import Array, Dictionary, Name, Stream, settings
from pyhanko.pdf_utils.crypt import AuthStatus
from pyhanko.pdf_utils.misc import PdfDecodeLimitError
from pyhanko.pdf_utils.reader import PdfFileReader

from stamping_service.adapters.pdf import geometry
from stamping_service.adapters.pdf.decode import DecodeLimitExceeded, decoded_size

MiB = 1024 * 1024
RATIO_FLOOR = MiB
"""Decoded size below which ``max_decode_ratio`` is not enforced (tiny streams compress well)."""
ACTIVE_ACTIONS = frozenset({"/JavaScript", "/Launch", "/ImportData", "/RichMediaExecute"})
ACTIVE_KEYS = {"/JS": "a /JS script", "/AA": "additional actions (/AA)"}


class RejectCode(StrEnum):
    TOO_LARGE = "too_large"
    NOT_A_PDF = "not_a_pdf"
    UNREADABLE = "unreadable"
    ENCRYPTED = "encrypted"
    TOO_MANY_PAGES = "too_many_pages"
    TOO_MANY_OBJECTS = "too_many_objects"
    TOO_DEEPLY_NESTED = "too_deeply_nested"
    DECOMPRESSION_BOMB = "decompression_bomb"
    NO_PAGES = "no_pages"
    PAGE_OUT_OF_RANGE = "page_out_of_range"
    STAMP_OUTSIDE_PAGE = "stamp_outside_page"
    ACTIVE_CONTENT = "active_content"
    CERTIFIED_NO_CHANGES = "certified_no_changes"


class PdfRejected(Exception):
    """The document cannot be stamped; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: RejectCode, message: str):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 4 * MiB
    max_pages: int = 1000
    max_objects: int = 50_000
    max_depth: int = 64
    """Nesting of arrays and dictionaries inside one object."""
    max_decoded_bytes: int = 64 * MiB
    """Decoded size of any one stream."""
    max_decode_ratio: float = 1100
    """Decoded / encoded size of one stream; just above one Deflate layer's ~1032, so it catches stacked filters."""
    max_total_decoded_bytes: int = 256 * MiB
    parse_timeout_s: float = 10.0
    """Enforced by the caller around the worker process (see the module docstring)."""


@dataclass(frozen=True)
class Inspection:
    pages: int
    page_width: float
    """Width of the requested page as displayed (after ``/Rotate``), in points."""
    page_height: float
    rotation: int
    stamp_rect: geometry.Box
    """Where the stamp goes, in the page's user space (the widget's ``/Rect``)."""
    signed: bool
    """The document already carries at least one signature."""
    encrypted: bool
    pdf_version: str


def inspect_pdf(
    data: bytes, *, password: str | None, page: int, x: float, y: float, size: float, limits: Limits,
) -> Inspection:
    """Describe a stampable document or raise ``PdfRejected``; ``page`` is 1-based, x/y/size in points."""
    if len(data) > limits.max_bytes:
        raise PdfRejected(RejectCode.TOO_LARGE, f"the file is larger than {limits.max_bytes} bytes")
    if b"%PDF-" not in data[:1024]:
        raise PdfRejected(RejectCode.NOT_A_PDF, "the file is not a PDF document")
    with _qpdf_limits(limits):
        inspection = _inspect_with_qpdf(data, password, page, x, y, size, limits)
    _check_signer_reads(data, password, page - 1)
    return inspection


@contextmanager
def _qpdf_limits(limits: Limits) -> Iterator[None]:
    previous = settings.set_qpdf_limits(
        parser_max_nesting=limits.max_depth, flate_max_memory=limits.max_decoded_bytes,
        run_length_max_memory=limits.max_decoded_bytes, png_max_memory=limits.max_decoded_bytes,
        tiff_max_memory=limits.max_decoded_bytes,
    )
    try:
        yield
    finally:
        settings.set_qpdf_limits(**previous)  # type: ignore[arg-type]


def _limit_refusal(messages: list[str], limits: Limits) -> PdfRejected | None:
    """The refusal for a qpdf limit hit while parsing, if any (qpdf reports them as warnings or errors)."""
    for message in messages:
        if "parser-max-nesting" in message:
            return PdfRejected(RejectCode.TOO_DEEPLY_NESTED,
                               f"an object nests arrays or dictionaries more than {limits.max_depth} deep")
        if "memory limit exceeded" in message:
            return PdfRejected(RejectCode.DECOMPRESSION_BOMB,
                               f"a stream decodes to more than {limits.max_decoded_bytes} bytes")
    return None


def _inspect_with_qpdf(
    data: bytes, password: str | None, page: int, x: float, y: float, size: float, limits: Limits,
) -> Inspection:
    try:
        pdf = pikepdf.open(io.BytesIO(data), password=password or "", attempt_recovery=False)
    except pikepdf.PasswordError:
        raise _encrypted(password) from None
    except Exception as exc:  # hostile input must end in a refusal, whatever the parser trips on
        if _raw_flate_bomb(data, limits.max_decoded_bytes):  # qpdf's own warnings are lost when opening fails
            raise PdfRejected(RejectCode.DECOMPRESSION_BOMB,
                              f"a stream decodes to more than {limits.max_decoded_bytes} bytes") from None
        raise _limit_refusal([str(exc)], limits) or PdfRejected(
            RejectCode.UNREADABLE, "the file is damaged or not a well-formed PDF") from None
    with pdf:
        try:
            return _describe(pdf, page, x, y, size, limits)
        except PdfRejected:
            raise
        except Exception as exc:
            raise _limit_refusal([*pdf.get_warnings(), str(exc)], limits) or PdfRejected(
                RejectCode.UNREADABLE, f"the document's structure is broken ({type(exc).__name__})") from None


def _raw_flate_bomb(data: bytes, cap: int) -> bool:
    """Whether any stream in the raw file, read as Flate data, inflates past ``cap``."""
    view = memoryview(data)
    for match in re.finditer(rb"stream\r?\n", data):
        try:
            if len(zlib.decompressobj().decompress(view[match.end():], cap + 1)) > cap:
                return True
        except zlib.error:
            continue
    return False


def _encrypted(password: str | None) -> PdfRejected:
    return PdfRejected(RejectCode.ENCRYPTED, "the password is wrong" if password
                       else "the document is password-protected: give its password")


def _describe(pdf: pikepdf.Pdf, page: int, x: float, y: float, size: float, limits: Limits) -> Inspection:
    root = pdf.Root
    declared = root.Pages.get("/Count")
    if isinstance(declared, int) and declared > limits.max_pages:
        raise _too_many_pages(limits)
    if len(pdf.objects) > limits.max_objects:
        raise PdfRejected(RejectCode.TOO_MANY_OBJECTS, f"the document has more than {limits.max_objects} objects")
    _scan_objects(pdf, limits)  # parses every object, so qpdf has met any limit by now
    refusal = _limit_refusal(pdf.get_warnings(), limits)
    if refusal is not None:
        raise refusal
    _check_catalog(root)
    pages = len(pdf.pages)
    if pages == 0:
        raise PdfRejected(RejectCode.NO_PAGES, "the document has no pages")
    if pages > limits.max_pages:
        raise _too_many_pages(limits)
    if not 1 <= page <= pages:
        raise PdfRejected(RejectCode.PAGE_OUT_OF_RANGE, f"page {page} does not exist (the document has {pages})")
    page_obj = pdf.pages[page - 1].obj
    media = _inherited(page_obj, "/MediaBox", limits.max_depth)
    if not isinstance(media, Array):
        raise PdfRejected(RejectCode.UNREADABLE, f"page {page} has no MediaBox")
    crop = _inherited(page_obj, "/CropBox", limits.max_depth)
    box = geometry.visible_box(geometry.normalized([float(v) for v in media]),
                               geometry.normalized([float(v) for v in crop]) if isinstance(crop, Array) else None)
    rotate = _inherited(page_obj, "/Rotate", limits.max_depth)
    rotation = geometry.rotation(rotate if isinstance(rotate, int) else 0)
    width, height = geometry.displayed_size(box, rotation)
    rect = geometry.stamp_rect(box, rotation, x, y, size)
    if rect is None:
        raise PdfRejected(RejectCode.STAMP_OUTSIDE_PAGE, f"a {size:g} pt stamp at ({x:g}, {y:g}) does not fit "
                                                          f"on page {page} ({width:g} x {height:g} pt)")
    signed, locked = _signature_state(root, limits)
    if locked:
        raise PdfRejected(RejectCode.CERTIFIED_NO_CHANGES,
                          "the document is certified with no changes allowed; a stamp would invalidate it")
    return Inspection(pages=pages, page_width=width, page_height=height, rotation=rotation, stamp_rect=rect,
                      signed=signed, encrypted=pdf.is_encrypted, pdf_version=_version(pdf))


def _too_many_pages(limits: Limits) -> PdfRejected:
    return PdfRejected(RejectCode.TOO_MANY_PAGES, f"the document has more than {limits.max_pages} pages")


def _scan_objects(pdf: pikepdf.Pdf, limits: Limits) -> None:
    """Decode every stream under the caps and look for active content in every object."""
    budget = limits.max_total_decoded_bytes
    for obj in pdf.objects:
        if isinstance(obj, Stream):
            budget -= _stream_size(obj, limits, budget)
            _refuse_active_content(obj.stream_dict, obj.objgen)
        elif isinstance(obj, Dictionary | Array):
            _refuse_active_content(obj, obj.objgen)


def _stream_size(stream: Stream, limits: Limits, budget: int) -> int:
    raw = stream.read_raw_bytes()
    filters = stream.get("/Filter")
    names = [str(f) for f in filters] if isinstance(filters, Array) else [str(filters)] if filters else []
    stream_cap = min(limits.max_decoded_bytes, max(RATIO_FLOOR, int(limits.max_decode_ratio * len(raw))))
    try:
        return decoded_size(raw, names, min(stream_cap, budget))
    except DecodeLimitExceeded:
        number = stream.objgen[0]
        if budget < stream_cap:
            message = f"the streams decode to more than {limits.max_total_decoded_bytes} bytes in all"
        else:
            message = f"stream {number} decodes to more than {stream_cap} bytes from {len(raw)}"
        raise PdfRejected(RejectCode.DECOMPRESSION_BOMB, message) from None


def _refuse_active_content(top: Dictionary | Array, objgen: tuple[int, int]) -> None:
    """Walk one object's direct contents (indirect ones are objects of their own)."""
    stack: list[Dictionary | Array] = [top]
    while stack:
        item = stack.pop()
        if isinstance(item, Array):
            children = list(item)
        else:
            children = []
            for key, value in item.items():
                found = ACTIVE_KEYS.get(key)
                if key == "/S" and isinstance(value, Name) and str(value) in ACTIVE_ACTIONS:
                    found = f"a {value} action"
                if found is not None:
                    raise PdfRejected(RejectCode.ACTIVE_CONTENT,
                                      f"object {objgen[0]} holds {found}; documents that run code are refused")
                children.append(value)
        stack.extend(c for c in children if isinstance(c, Dictionary | Array) and not c.is_indirect)


def _check_catalog(root: pikepdf.Object) -> None:
    names, form = root.get("/Names"), root.get("/AcroForm")
    if isinstance(names, Dictionary) and "/JavaScript" in names:
        raise PdfRejected(RejectCode.ACTIVE_CONTENT, "the document embeds JavaScript (a /JavaScript name tree)")
    if isinstance(form, Dictionary) and "/XFA" in form:
        raise PdfRejected(RejectCode.ACTIVE_CONTENT, "the document is an XFA form, which runs scripts")


def _inherited(node: Dictionary, key: str, max_depth: int) -> object:
    """A page attribute, looked up through ``/Parent`` as the page tree allows (bounded against loops)."""
    for _ in range(max_depth):
        value = node.get(key)
        if value is not None:
            return value
        parent = node.get("/Parent")
        if not isinstance(parent, Dictionary):
            return None
        node = parent
    return None


def _signature_state(root: pikepdf.Object, limits: Limits) -> tuple[bool, bool]:
    """Whether any signature field is signed, and whether a certification forbids all changes."""
    form = root.get("/AcroForm")
    fields = form.get("/Fields") if isinstance(form, Dictionary) else None
    stack: list[tuple[object, object]] = [(f, None) for f in fields] if isinstance(fields, Array) else []
    seen: set[tuple[int, int]] = set()
    signed = False
    while stack and not signed and len(seen) <= limits.max_objects:
        field, inherited_type = stack.pop()
        if not isinstance(field, Dictionary) or (field.is_indirect and field.objgen in seen):
            continue
        seen.add(field.objgen)
        field_type = field.get("/FT", inherited_type)
        signed = field_type == Name.Sig and isinstance(field.get("/V"), Dictionary)
        kids = field.get("/Kids")
        if isinstance(kids, Array):
            stack.extend((kid, field_type) for kid in kids)
    perms = root.get("/Perms")
    certification = perms.get("/DocMDP") if isinstance(perms, Dictionary) else None
    references = certification.get("/Reference") if isinstance(certification, Dictionary) else None
    locked = isinstance(references, Array) and any(
        isinstance(ref, Dictionary) and ref.get("/TransformMethod") == Name.DocMDP
        and isinstance(params := ref.get("/TransformParams"), Dictionary) and params.get("/P") == 1
        for ref in references
    )
    return signed, locked


def _version(pdf: pikepdf.Pdf) -> str:
    """The header version, unless the catalog's ``/Version`` names a later one."""
    declared = pdf.Root.get("/Version")
    catalog = str(declared)[1:] if isinstance(declared, Name) else ""
    if re.fullmatch(r"\d+\.\d+", catalog) and _numbers(catalog) > _numbers(pdf.pdf_version):
        return catalog
    return pdf.pdf_version


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _check_signer_reads(data: bytes, password: str | None, page_index: int) -> None:
    """The stamper (pyHanko) must be able to read what qpdf accepted, or the job would fail later."""
    try:
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        if reader.encrypted and reader.decrypt(password or "").status == AuthStatus.FAILED:
            raise _encrypted(password)
        reader.find_page_for_modification(page_index)
    except PdfRejected:
        raise
    except PdfDecodeLimitError:
        raise PdfRejected(RejectCode.DECOMPRESSION_BOMB, "a stream decodes past the signer's limits") from None
    except Exception as exc:
        raise PdfRejected(RejectCode.UNREADABLE,
                          f"the signer cannot read this PDF ({type(exc).__name__}); re-save it and try again") from None
