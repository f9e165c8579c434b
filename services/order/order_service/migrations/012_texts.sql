-- Sign-in texts waiting for the notification adapter, written by POST /v1/auth/otp in the same
-- statement as the code's digest, and sent by the order worker's text dispatcher straight from
-- here (no broker hop: the row is the outbox). A row is leased while it is being sent (due_at in
-- the future), deleted once sent or dropped (its code expired), and kept with its reason and
-- without its text when the adapter refused it for good (failed_at), until housekeeping.
CREATE TABLE sms_outbox (
    id           bigserial PRIMARY KEY,
    phone        text NOT NULL,
    body         text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    due_at       timestamptz NOT NULL DEFAULT now(),
    attempts     int NOT NULL DEFAULT 0,
    failed_at    timestamptz,
    last_error   text
);
CREATE INDEX sms_outbox_due ON sms_outbox (due_at, id) WHERE failed_at IS NULL;
