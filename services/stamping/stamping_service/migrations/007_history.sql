-- GET /v1/stampings: a caller's jobs newest first, paged by the key (created_at, id) (keyset pagination,
-- emeterai_shared.pagination); it also serves what stampings_account (account_id, created_at) did.
CREATE INDEX stampings_account_history ON stampings (account_id, created_at DESC, id DESC);
DROP INDEX IF EXISTS stampings_account;
-- A QUEUED job's place in the queue: the QUEUED jobs ahead of it in the order the workers take them
-- (created_at, id). Partial, so the count reads the queue only, never the table's history.
CREATE INDEX stampings_queued ON stampings (created_at, id) WHERE status = 'QUEUED';
