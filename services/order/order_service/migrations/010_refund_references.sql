-- A whole-order refund of a QRIS payment (late payment after expiry, an order that cannot be
-- fulfilled) goes back through the acquirer: the order keeps it beside the buyer's refunds of
-- unused stamps as kind 'order' (payment.refunded.v1: PAYING, its amount; payment.refund_settled.v1:
-- PAID_OUT with the acquirer's refundNo in payout_reference), so the order view and the receipt show
-- it with its reference. Buyer refunds of unused stamps are kind 'stamps'.
ALTER TABLE refunds ADD COLUMN kind text NOT NULL DEFAULT 'stamps' CHECK (kind IN ('stamps', 'order'));
