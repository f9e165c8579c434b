-- Every issued serial with its signed stamp token, by serial: a partner needs the tokens, and a
-- stamped serial is traced back to its order (and the order's partner) through this index.
CREATE TABLE order_serials (
    sn       text PRIMARY KEY,
    order_id uuid NOT NULL REFERENCES orders (id),
    token    text NOT NULL
);
CREATE INDEX order_serials_order ON order_serials (order_id);

-- What partner systems are told, in order: id is the feed cursor (GET /v1/partner/events), event_id
-- the Standard Webhooks webhook-id. Rows of one partner are written under a per-partner lock, so
-- they become visible in id order and a reader resuming after a cursor never misses one.
CREATE TABLE partner_events (
    id         bigserial PRIMARY KEY,
    partner_id text NOT NULL,
    event_id   uuid NOT NULL UNIQUE,
    type       text NOT NULL,
    created_at timestamptz NOT NULL,
    data       jsonb NOT NULL
);
CREATE INDEX partner_events_feed ON partner_events (partner_id, id);

-- One webhook delivery per event of a partner with a webhook_url, written with the event.
CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    partner_event_id bigint NOT NULL UNIQUE REFERENCES partner_events (id),
    partner_id       text NOT NULL,
    status           text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      int,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (partner_id, next_attempt_at) WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, partner_id, id);

-- The delivery log: every attempt with its answer (HTTP status) or error, and how long it took.
CREATE TABLE delivery_attempts (
    id          bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id),
    attempt     int NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status_code int,
    error       text,
    duration_ms double precision NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);
