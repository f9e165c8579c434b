"""An acquirer back after an outage: the work its outage postponed (QRs to generate, pending QRs to
query, expiries to finish, refunds to send) is due at once, not at the end of backoffs that grew
while it was down; another acquirer's work keeps its schedule. Real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from uuid import uuid4

from payment_service.adapters.qris_store import QrisStore

if TYPE_CHECKING:
    from conftest import Payment


async def test_resume_makes_an_acquirers_postponed_work_due_now(payment: Payment) -> None:
    now = datetime.now(UTC)
    later = now + timedelta(minutes=30)
    ours, theirs = f"acq-{uuid4().hex[:6]}", f"acq-{uuid4().hex[:6]}"
    bills = [await payment.place_order(12_500, quantity=1) for _ in range(3)]
    for bill, acquirer in zip(bills, (ours, ours, theirs), strict=True):
        await payment.pool.execute(
            """UPDATE bills SET method = 'qris', bank = $2, partner_reference_no = $3, qr_next_attempt_at = $4,
                                qr_next_query_at = $4, qr_expiry_retry_at = $4 WHERE bill_id = $1""",
            bill["bill_id"], acquirer, f"EM{uuid4().hex[:20]}", later)
    for bill, acquirer in ((bills[0], ours), (bills[2], theirs)):
        await payment.pool.execute(
            """INSERT INTO qris_refunds (partner_refund_no, refund_id, bill_id, acquirer, partner_reference_no,
                                         reference_no, amount, recorded_at, next_attempt_at)
               VALUES ($1, $2, $3, $4, 'EMX', '1', 12500, $5, $6)""",
            f"RF{uuid4().hex}", uuid4(), bill["bill_id"], acquirer, now, later)

    async with payment.pool.acquire() as conn:
        assert await QrisStore(conn).resume(ours, now) == 3  # two bills and one refund
        assert await QrisStore(conn).resume(ours, now) == 0  # nothing postponed any more

    rows = await payment.pool.fetch(
        """SELECT bank, qr_next_attempt_at, qr_next_query_at, qr_expiry_retry_at FROM bills
            WHERE bill_id = ANY($1::uuid[])""", [b["bill_id"] for b in bills])
    for row in rows:
        expected = now if row["bank"] == ours else later
        assert (row["qr_next_attempt_at"], row["qr_next_query_at"], row["qr_expiry_retry_at"]) == (expected,) * 3
    refunds = dict(await payment.pool.fetch("SELECT acquirer, next_attempt_at FROM qris_refunds WHERE acquirer"
                                            " = ANY($1::text[])", [ours, theirs]))
    assert refunds == {ours: now, theirs: later}
