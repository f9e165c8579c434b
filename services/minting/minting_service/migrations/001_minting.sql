-- Every serial ever generated, from stock to stamp: STOCK -> UNUSED (issued) -> STAMPED, and
-- STOCK | UNUSED -> VOID. The primary key makes serials unique; rows are never deleted and never
-- go back (trigger below), so a serial is never issued twice nor used twice.
CREATE TABLE serials (
    sn              text COLLATE "C" PRIMARY KEY CHECK (sn ~ '^[0-9A-Z]{22}$'),
    -- generation order: stock is issued oldest first. Serials are random, so neighbours in this
    -- order say nothing about each other's values.
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    prefix          text NOT NULL DEFAULT '',
    status          text NOT NULL DEFAULT 'STOCK'
                    CHECK (status IN ('STOCK', 'UNUSED', 'STAMPED', 'VOID')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    order_id        uuid,
    issued_at       timestamptz,
    stamping_id     uuid,
    document_sha256 text,
    stamped_at      timestamptz,
    void_reason     text,
    voided_at       timestamptz,
    CHECK (status NOT IN ('UNUSED', 'STAMPED') OR (order_id IS NOT NULL AND issued_at IS NOT NULL)),
    CHECK (status <> 'STAMPED' OR (stamping_id IS NOT NULL AND document_sha256 IS NOT NULL
                                   AND stamped_at IS NOT NULL))
);
-- Issuance claims from the left of this index (FOR UPDATE SKIP LOCKED).
CREATE INDEX serials_stock ON serials (seq) WHERE status = 'STOCK';

CREATE FUNCTION serials_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'serial %: serials are never deleted', OLD.sn;
    END IF;
    IF NEW.sn <> OLD.sn THEN
        RAISE EXCEPTION 'serial %: a serial number never changes', OLD.sn;
    END IF;
    IF NEW.status <> OLD.status AND NOT (
           (OLD.status = 'STOCK' AND NEW.status IN ('UNUSED', 'VOID'))
        OR (OLD.status = 'UNUSED' AND NEW.status IN ('STAMPED', 'VOID'))) THEN
        RAISE EXCEPTION 'serial %: % -> % is not allowed', OLD.sn, OLD.status, NEW.status;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER serials_forward_only BEFORE UPDATE OR DELETE ON serials
    FOR EACH ROW EXECUTE FUNCTION serials_forward_only();

-- One issuance per paid order, whatever the redeliveries: ISSUED (its serials carry its order_id)
-- or FAILED (out of stock; stock added later never fulfils it: the order is refunded instead).
CREATE TABLE issuances (
    order_id   uuid PRIMARY KEY,
    account_id uuid NOT NULL,
    partner_id text,
    quantity   int NOT NULL CHECK (quantity > 0),
    status     text NOT NULL CHECK (status IN ('ISSUED', 'FAILED')),
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Refused uses of a serial (already stamped by another stamping, void, not issued, unknown), for
-- auditors; one row per (serial, stamping).
CREATE TABLE reuse_attempts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sn                text NOT NULL,
    stamping_id       uuid NOT NULL,
    account_id        uuid NOT NULL,
    document_sha256   text NOT NULL,
    attempted_at      timestamptz NOT NULL,
    found_status      text,
    first_stamping_id uuid,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sn, stamping_id)
);
