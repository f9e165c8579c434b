-- Every application of a probe message is one row: duplicates would show as extra rows.
CREATE TABLE probe_effects (
    id         bigserial PRIMARY KEY,
    message_id text NOT NULL,
    seq        int NOT NULL,
    attempt    int NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX probe_effects_message ON probe_effects (message_id);
