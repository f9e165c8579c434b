-- Global admission at POST /v1/stampings measures the drain rate: jobs finished in a recent window.
CREATE INDEX stampings_finished ON stampings (updated_at) WHERE status IN ('DONE', 'FAILED');
