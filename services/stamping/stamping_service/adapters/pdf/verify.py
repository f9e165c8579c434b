"""Check the stamps of a PDF with pyHanko's validator against our published root certificates.

A stamp is ``intact`` when its signature is cryptographically sound and covers the whole file up
to its own revision, and whatever came after is at most further signing (form filling, new
signatures, validation data): a stamped document is final, so added annotations or any other
change make it not intact. ``trusted`` means the signer's chain ends at one of ``trust_roots``
(no network fetching, no OS trust store). ``valid`` is pyHanko's bottom line (intact, trusted,
timestamp sound) together with ``intact``. Like ``stamp_pdf``, call this in a worker process.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import x509
from pyhanko.keys import load_certs_from_pemder_data
from pyhanko.pdf_utils.crypt import AuthStatus
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation import EmbeddedPdfSignature, SignatureCoverageLevel, validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

REASON_SERIAL = re.compile(r"\[([0-9A-Z]{22})\]")
ALLOWED_AFTER = {ModificationLevel.NONE, ModificationLevel.LTA_UPDATES, ModificationLevel.FORM_FILLING}


@dataclass(frozen=True)
class StampCheck:
    field: str | None
    sn: str | None
    """The serial read from the signature's reason ``"[SN] ..."``; None for other signatures."""
    signed_at: datetime | None
    """The timestamp token's time when there is one, else the time the signer claims."""
    intact: bool
    trusted: bool
    valid: bool


def verify_pdf(data: bytes, trust_roots: list[bytes], *, password: str | None = None) -> list[StampCheck]:
    """One check per signature in the file, in file order; [] when the data is not a readable PDF."""
    try:
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        if reader.encrypted and reader.decrypt(password or "").status == AuthStatus.FAILED:
            return []
        signatures = reader.embedded_regular_signatures
    except Exception:  # public input: garbage is "no stamps", never an error
        return []
    roots = [cert for pem in trust_roots for cert in load_certs_from_pemder_data(pem)]
    return [_check(signature, roots) for signature in signatures]


def _check(signature: EmbeddedPdfSignature, roots: list[x509.Certificate]) -> StampCheck:
    try:
        sig_object = signature.sig_object
        reason = str(sig_object["/Reason"]) if "/Reason" in sig_object else ""
        field: str | None = signature.field_name
    except Exception:
        reason, field = "", None
    match = REASON_SERIAL.match(reason)
    sn = match.group(1) if match else None
    try:
        context = ValidationContext(trust_roots=roots, allow_fetching=False)
        status = validate_pdf_signature(signature, signer_validation_context=context)
    except Exception:
        return StampCheck(field=field, sn=sn, signed_at=None, intact=False, trusted=False, valid=False)
    intact = (
        status.intact and status.valid
        and status.coverage in (SignatureCoverageLevel.ENTIRE_FILE, SignatureCoverageLevel.ENTIRE_REVISION)
        and status.modification_level in ALLOWED_AFTER
    )
    timestamp = status.timestamp_validity
    signed_at = timestamp.timestamp if timestamp is not None else (
        status.signer_reported_dt or signature.self_reported_timestamp)
    return StampCheck(field=field, sn=sn, signed_at=signed_at, intact=intact, trusted=status.trusted,
                      valid=intact and status.bottom_line)
