-- Transactional outbox: rows written in the same transaction as the state they announce.
CREATE TABLE outbox (
    id             bigserial PRIMARY KEY,
    message_id     uuid NOT NULL UNIQUE,
    message_type   text NOT NULL,
    routing_key    text NOT NULL,
    correlation_id text,
    body           bytea NOT NULL,
    headers        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    attempts       int NOT NULL DEFAULT 0,
    last_error     text,
    sent_at        timestamptz,
    parked_at      timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX outbox_parked ON outbox (id) WHERE parked_at IS NOT NULL;

-- One notification per writing statement wakes the relay without polling.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Inbox: one row per (consumer queue, message id) makes every handler idempotent.
CREATE TABLE inbox (
    consumer     text NOT NULL,
    message_id   text NOT NULL,
    message_type text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_received_at ON inbox (received_at);
