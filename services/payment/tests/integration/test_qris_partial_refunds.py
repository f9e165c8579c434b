"""A buyer's refunds of unused stamps of a QRIS payment go back through the acquirer's qr-mpm-refund,
each with its own partnerRefundNo, never through the payout adapter; the acquirer's refundNo pays each
out once (``payment.partial_refund_paid_out.v1``). Real PostgreSQL, broker and worker; the acquirer is
the simulator as a real HTTP server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from emeterai_shared.contracts.events import PartialRefundPaidOut, PartialRefundRequested
from emeterai_testkit.fixtures import eventually, free_port
from payment_service.adapters.acquirers import Acquirer, AcquirerClients, AcquirerRegistry
from payment_service.adapters.acquirersim import AcquirerSimulator, SimQr, new_acquirer_entry
from payment_service.service_layer.qris import refund_qrs
from payment_service.service_layer.refunds import pay_out_due

if TYPE_CHECKING:
    from conftest import Payment

PARTIAL = "payment.on_partial_refund_requested"


class NoPayouts:
    """The payout adapter: must not be called for a QRIS payment's refunds."""

    def __init__(self) -> None:
        self.calls = 0

    async def pay_out(self, payout: Any) -> str:
        self.calls += 1
        return "NOT-FOR-QRIS"


async def test_partial_refunds_of_a_qris_payment_each_go_through_qr_mpm_refund_once(payment: Payment) -> None:
    port = free_port()
    entry, key = new_acquirer_entry(f"http://127.0.0.1:{port}/snap", acquirer_id=f"acq-{uuid4().hex[:6]}")
    sim = AcquirerSimulator(entry, key)
    runner = await sim.start(port)
    clients = AcquirerClients(timeout_s=2.0, attempts=2)
    try:
        # a captured payment of 37 500 whose bill is a QRIS bill of that acquirer, paid at the acquirer
        bill = await payment.place_order(37_500, quantity=3)
        async with payment.bank() as bank:
            cno = str(bill["virtual_account_no"])[len(bank.partner_service_id):]
            assert (await bank.pay(cno, 37_500))[1]["responseCode"] == "2002500"
        prn, reference_no = f"EM{uuid4().hex[:20]}", "123456789012"
        await payment.pool.execute("UPDATE bills SET method = 'qris', bank = $2, partner_reference_no = $3,"
                                   " qr_reference_no = $4 WHERE bill_id = $1", bill["bill_id"], entry["acquirer_id"],
                                   prn, reference_no)
        sim.qrs[prn] = SimQr(prn, reference_no, 37_500, "000201", status="00")

        order_id = bill["order_id"]
        requests = [PartialRefundRequested(order_id=order_id, account_id=uuid4(), refund_id=uuid4(), serials=(sn,),
                                           amount=12_500, requested_at=datetime.now(UTC)) for sn in ("SN-A", "SN-B")]
        ids = [await payment.publish(r, correlation_id=str(order_id)) for r in requests]
        ids.append(await payment.publish(requests[0], message_id=ids[0]))  # redelivered
        await eventually(lambda: payment.pool.fetchval(
            "SELECT count(*) = 2 FROM qris_refunds WHERE refund_id = ANY($1::uuid[])",
            [r.refund_id for r in requests]), message="two QRIS refunds recorded")
        rows = await payment.pool.fetch("SELECT partner_refund_no, refund_id, amount, reference_no FROM qris_refunds"
                                        " WHERE bill_id = $1 ORDER BY recorded_at", bill["bill_id"])
        assert sorted((r["partner_refund_no"], r["amount"], r["reference_no"]) for r in rows) == sorted(
            (f"RF{r.refund_id.hex}", 12_500, reference_no) for r in requests)
        assert await payment.pool.fetchval("SELECT count(*) FROM partial_refunds WHERE order_id = $1 AND via = 'qris'"
                                           " AND status = 'PAYING'", order_id) == 2

        payouts = NoPayouts()
        later = datetime.now(UTC) + timedelta(days=1)  # due whatever the service's own worker tried meanwhile
        await pay_out_due(payment.pool, payouts, later, retry_s=0.0)
        assert payouts.calls == 0

        sim.time_out_refunds(1, slow_s=3.0)  # the first answer comes too late: sent again, the same number
        registry = AcquirerRegistry([Acquirer.of(entry)])
        for attempt in range(1, 10):
            await refund_qrs(payment.pool, registry, clients, later + timedelta(hours=attempt))
            if len(sim.qrs[prn].refunds) == 2 and not await payment.pool.fetchval(
                    "SELECT count(*) FROM qris_refunds WHERE bill_id = $1 AND status = 'PENDING'", bill["bill_id"]):
                break
        made = sim.qrs[prn].refunds
        assert sorted(made) == sorted(f"RF{r.refund_id.hex}" for r in requests)
        assert all(sim.refund_calls.count(no) >= 1 for no in made)

        paid = {r["refund_id"]: r for r in await payment.pool.fetch(
            "SELECT refund_id, status, payout_reference FROM partial_refunds WHERE order_id = $1", order_id)}
        events = [e for e in await payment.events(PartialRefundPaidOut.TYPE, order_id)
                  if isinstance(e, PartialRefundPaidOut)]
        assert sorted((e.refund_id, e.payout_reference) for e in events) == sorted(
            (r.refund_id, made[f"RF{r.refund_id.hex}"]["refundNo"]) for r in requests)
        for r in requests:
            assert (paid[r.refund_id]["status"], paid[r.refund_id]["payout_reference"]) == (
                "PAID_OUT", made[f"RF{r.refund_id.hex}"]["refundNo"])

        await refund_qrs(payment.pool, registry, clients, later + timedelta(days=1))  # nothing due: nothing more
        assert len(await payment.events(PartialRefundPaidOut.TYPE, order_id)) == 2
    finally:
        await clients.close()
        await runner.cleanup()
