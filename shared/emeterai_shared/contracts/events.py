"""Version 1 of the platform's integration events.

Field names are part of the contract between services: add optional fields freely; a change
that breaks old consumers is a new major version (``.v2``) published beside the old one.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from emeterai_shared.contracts.base import Message, message

# --- purchase path -------------------------------------------------------------------------
# order ──order.placed──► payment ──payment.bill_issued / bill_failed / bill_expired──► order
# bank ──SNAP──► payment ──payment.captured──► order (PAID, the receipt) and minting (the serials)
#   (a capture from an older payment, without account_id and quantity: order ──order.paid──► minting)
# order ──order.refund_requested──► payment ──payment.refunded──► order
#   (QRIS: ──qr-mpm-refund 2007800──► payment ──payment.refund_settled──► order, the refundNo)


@message("order.placed.v1")
class OrderPlaced(Message):
    order_id: UUID
    account_id: UUID
    quantity: int
    amount: int
    bank: str | None = None
    partner_id: str | None = None
    placed_at: datetime
    payment_method: str = "va"
    """How the buyer pays: ``va`` (virtual account) or ``qris``. Absent in older messages (``va``)."""


@message("order.paid.v1")
class OrderPaid(Message):
    """The order's payment is captured: minting may issue ``quantity`` serials for it."""

    order_id: UUID
    account_id: UUID
    quantity: int
    amount: int
    partner_id: str | None = None
    paid_at: datetime


@message("order.refund_requested.v1")
class OrderRefundRequested(Message):
    """The order cannot be fulfilled (expired before a late payment, out of stock, ...)."""

    order_id: UUID
    amount: int
    reason: str
    requested_at: datetime


@message("payment.bill_issued.v1")
class BillIssued(Message):
    order_id: UUID
    bill_id: UUID
    bank: str
    virtual_account_no: str
    """The VA number; empty for a QRIS bill."""
    amount: int
    expires_at: datetime
    method: str = "va"
    """``va`` or ``qris`` (then ``bank`` is the acquirer and ``qr_content`` the QR). Absent in older messages."""
    qr_content: str | None = None
    """The EMV QRIS string exactly as the acquirer returned it (QRIS bills only)."""


@message("payment.bill_failed.v1")
class BillFailed(Message):
    """No bill can be issued for the order (for example an unknown bank)."""

    order_id: UUID
    reason: str


@message("payment.bill_expired.v1")
class BillExpired(Message):
    order_id: UUID
    bill_id: UUID
    expired_at: datetime


@message("payment.captured.v1")
class PaymentCaptured(Message):
    order_id: UUID
    bill_id: UUID
    payment_id: UUID
    amount: int
    bank: str
    payment_request_id: str
    captured_at: datetime
    late: bool = False
    method: str = "va"
    """How the buyer paid: ``va`` (virtual account); later ``qris``. Absent in older messages."""
    reference_no: str | None = None
    """The bank's reference number of the payment (SNAP ``referenceNo``), when it sent one."""
    account_id: UUID | None = None
    """The buyer (from ``order.placed``). With ``quantity``, what minting needs to issue the
    serials of a capture that is not ``late`` straight from this event (no ``order.paid`` hop).
    Absent in older messages: then the order sends ``order.paid`` as before."""
    quantity: int | None = None
    partner_id: str | None = None

    def facts(self) -> CapturedPayment:
        return CapturedPayment(payment_id=self.payment_id, bill_id=self.bill_id, amount=self.amount, bank=self.bank,
                               payment_request_id=self.payment_request_id, captured_at=self.captured_at,
                               method=self.method, reference_no=self.reference_no)


class CapturedPayment(BaseModel):
    """A capture as minting saw it (``payment.captured.v1`` without the order's fields), carried by
    what minting answers straight from that event, so that the order applies the payment with the
    answer when the answer overtakes the capture (separate queues)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    payment_id: UUID
    bill_id: UUID
    amount: int
    bank: str
    payment_request_id: str
    captured_at: datetime
    method: str = "va"
    reference_no: str | None = None


@message("payment.refunded.v1")
class PaymentRefunded(Message):
    order_id: UUID
    refund_id: UUID
    payment_id: UUID | None
    amount: int
    reason: str
    refunded_at: datetime


@message("payment.refund_settled.v1")
class PaymentRefundSettled(Message):
    """A whole-order refund (``payment.refunded.v1``) of a QRIS payment went back to the payer:
    the acquirer answered ``qr-mpm-refund`` with ``2007800``; ``reference`` is its ``refundNo``.
    Published after ``payment.refunded.v1`` of the same ``refund_id`` (it may be consumed first)."""

    order_id: UUID
    refund_id: UUID
    amount: int
    reference: str
    settled_at: datetime


@message("payment.acquirer_state.v1")
class AcquirerStateChanged(Message):
    """Whether the payment worker can reach a QRIS acquirer: sent when its circuit breaker opens
    (``available`` false, ``retry_at`` when the next probe may go), opens again after a failed probe
    (a later ``retry_at``) or closes, and once for every acquirer when a worker starts. The order
    service sheds new QRIS orders while the acquirer that takes new QRIS bills is unavailable; the
    newest report (``changed_at``) wins."""

    acquirer_id: str
    available: bool
    retry_at: datetime | None = None
    changed_at: datetime
    takes_new_bills: bool = True
    """Whether new QRIS bills go to this acquirer (the first configured one)."""


# --- minting and stamping --------------------------------------------------------------------
# payment ──payment.captured──► minting ──minting.serials_issued / minting.failed──► order, stamping
#   (or order ──order.paid──► minting, for a capture without account_id and quantity)
# stamping ──stamping.document_stamped──► minting (registry), order (partner webhooks)
# stamping ──stamping.document_failed──► order (partner webhooks)


class IssuedSerial(BaseModel):
    """One stamp: its serial and the Ed25519-signed token printed in its QR code."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sn: str
    token: str


@message("minting.serials_issued.v1")
class SerialsIssued(Message):
    order_id: UUID
    account_id: UUID
    partner_id: str | None = None
    serials: tuple[IssuedSerial, ...]
    issued_at: datetime
    payment: CapturedPayment | None = None
    """The capture the serials answer, when minting issued them straight from ``payment.captured``."""


@message("minting.failed.v1")
class MintingFailed(Message):
    """No serials can be issued for a paid order (out of stock): the order must be refunded."""

    order_id: UUID
    reason: str
    failed_at: datetime
    payment: CapturedPayment | None = None
    """The capture this answers, when minting failed straight from ``payment.captured``."""


@message("stamping.document_stamped.v1")
class DocumentStamped(Message):
    stamping_id: UUID
    account_id: UUID
    sn: str
    document_sha256: str
    stamped_at: datetime


@message("stamping.document_failed.v1")
class DocumentFailed(Message):
    """A stamping job failed for good (its serial is UNUSED again): order tells the partner whose
    serial it was (partner event ``stamping.failed``)."""

    stamping_id: UUID
    account_id: UUID
    sn: str
    error: str
    failed_at: datetime


# --- waiting for stock, voiding serials ------------------------------------------------------
# minting ──minting.stock_awaited──► order (the PAID order shows it waits; minting then issues
#   the serials when stock arrives, or sends minting.failed at refund_at)
# order ──order.serials_void_requested──► stamping (the decider: UNUSED stamps leave the quota,
#   stamps in use are kept) ──stamping.serials_voided──► minting (registry VOID), order (refund of
#   what was voided)


@message("minting.stock_awaited.v1")
class StockAwaited(Message):
    """A paid order's serials wait for stock: issued when it arrives, refunded at ``refund_at``."""

    order_id: UUID
    quantity: int
    since: datetime
    refund_at: datetime
    payment: CapturedPayment | None = None
    """The capture this answers, when minting started waiting straight from ``payment.captured``."""


@message("order.serials_void_requested.v1")
class SerialsVoidRequested(Message):
    """The order gives these serials back (it cannot accept them, or is refunded): void the unused."""

    order_id: UUID
    account_id: UUID
    serials: tuple[str, ...]
    reason: str
    requested_at: datetime
    refund_id: UUID | None = None
    """Set for a buyer's refund of unused stamps (``POST /v1/orders/{id}/refund``): the answer
    carries it back so the order settles that refund; None for an order giving serials back."""


@message("stamping.serials_voided.v1")
class SerialsVoided(Message):
    """Stamping's answer to a void request: ``voided`` left the account's quota for good (minting
    marks them VOID; the order refunds them), ``kept`` were already used or are being used."""

    order_id: UUID
    account_id: UUID
    voided: tuple[str, ...]
    kept: tuple[str, ...]
    reason: str
    voided_at: datetime
    refund_id: UUID | None = None
    """The buyer's refund the request belonged to (``SerialsVoidRequested.refund_id``), if any."""


# --- applicants' accounts: phone sign-in -----------------------------------------------------
# order ──order.sms_requested──► order (its notification adapter: SMS gateway, or the dev sink)
# order ──order.account_verified──► stamping (refuses the account's tokens without a sign-in session)


@message("order.sms_requested.v1")
class SmsRequested(Message):
    """A text to send to a phone (a sign-in code): nobody waits for it; pointless after ``expires_at``."""

    phone: str
    text: str
    requested_at: datetime
    expires_at: datetime | None = None


@message("order.account_verified.v1")
class AccountVerified(Message):
    """The account's phone was verified by a sign-in with a code: from ``verified_at`` on, the
    account's tokens without a sign-in session (``sid``) are refused (the squatting rule)."""

    account_id: UUID
    verified_at: datetime


# --- buyers' refunds of unused stamps --------------------------------------------------------
# buyer ──POST /v1/orders/{id}/refund──► order ──order.serials_void_requested (refund_id)──► stamping
#   (decides, under the quota row locks POST /v1/stampings takes) ──stamping.serials_voided──►
#   minting (registry VOID), order ──order.partial_refund_requested──► payment (records, pays out
#   through the bank adapter, or for a QRIS payment through qr-mpm-refund)
#   ──payment.partial_refund_paid_out──► order (refund PAID_OUT)


@message("order.partial_refund_requested.v1")
class PartialRefundRequested(Message):
    """A FULFILLED order's buyer gets back the money of ``serials`` (voided, out of the quota)."""

    order_id: UUID
    account_id: UUID
    refund_id: UUID
    serials: tuple[str, ...]
    amount: int
    requested_at: datetime


@message("payment.partial_refund_paid_out.v1")
class PartialRefundPaidOut(Message):
    """The payment service recorded the partial refund and the bank paid it out."""

    order_id: UUID
    refund_id: UUID
    amount: int
    payout_reference: str
    paid_out_at: datetime
