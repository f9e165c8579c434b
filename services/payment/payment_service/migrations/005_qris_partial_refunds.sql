-- A buyer's refund of unused stamps of an order paid by QRIS goes back through the acquirer's
-- qr-mpm-refund (a qris_refunds row with the same refund_id and its own partnerRefundNo), not
-- through the payout adapter: via 'qris'. The payout job takes only via 'payout'; the QRIS refund
-- job marks the partial refund PAID_OUT with the acquirer's refundNo when it answers 2007800.
ALTER TABLE partial_refunds ADD COLUMN via text NOT NULL DEFAULT 'payout' CHECK (via IN ('payout', 'qris'));
-- The acquirer's refundNo of a whole-order QRIS refund is announced once (payment.refund_settled.v1),
-- in the transaction that records it; the settlement list names refunds by refundNo.
CREATE INDEX qris_refunds_done ON qris_refunds (acquirer, refunded_at) WHERE status = 'DONE';
