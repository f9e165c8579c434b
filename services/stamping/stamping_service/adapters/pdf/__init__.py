"""Pure PDF work of the stamping service: inspect an upload, stamp and sign it, verify stamps.

No database, broker or HTTP here. Every entry point is a plain synchronous function with
picklable arguments and results, meant to run in a process pool (CPU-bound, and pyHanko runs its
own event loop).
"""

from stamping_service.adapters.pdf.inspect import Inspection, Limits, PdfRejected, RejectCode, inspect_pdf
from stamping_service.adapters.pdf.signer import KeySigner, dev_signing_chain, load_signer
from stamping_service.adapters.pdf.stamp import field_name, stamp_pdf
from stamping_service.adapters.pdf.verify import StampCheck, verify_pdf

__all__ = [
    "Inspection",
    "KeySigner",
    "Limits",
    "PdfRejected",
    "RejectCode",
    "StampCheck",
    "dev_signing_chain",
    "field_name",
    "inspect_pdf",
    "load_signer",
    "stamp_pdf",
    "verify_pdf",
]
