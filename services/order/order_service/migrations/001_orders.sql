CREATE TABLE accounts (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    phone      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL,
    partner_id         text,
    quantity           int NOT NULL CHECK (quantity > 0),
    amount             bigint NOT NULL CHECK (amount > 0),
    bank               text,
    status             text NOT NULL,
    failure_reason     text,
    virtual_account_no text,
    bill_amount        bigint,
    expires_at         timestamptz,
    payment_id         uuid,
    serials            text[] NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'FAILED' OR failure_reason IS NOT NULL)
);
CREATE INDEX orders_account ON orders (account_id, created_at DESC);

-- Every transition, for operators and auditors.
CREATE TABLE order_history (
    id         bigserial PRIMARY KEY,
    order_id   uuid NOT NULL REFERENCES orders (id),
    old_status text,
    new_status text NOT NULL,
    reason     text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_history_order ON order_history (order_id, id);
