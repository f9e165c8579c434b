-- What the payment worker last reported about each QRIS acquirer (payment.acquirer_state.v1): while
-- the acquirer that takes new QRIS bills is unavailable, POST /v1/orders sheds QRIS orders (503
-- qris_unavailable) and GET /v1/pricing says so. The newest report (changed_at) wins.
CREATE TABLE acquirer_states (
    acquirer_id text PRIMARY KEY,
    available boolean NOT NULL,
    retry_at timestamptz,
    takes_new_bills boolean NOT NULL,
    changed_at timestamptz NOT NULL
);
