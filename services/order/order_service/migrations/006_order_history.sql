-- GET /v1/orders: a caller's orders newest first, paged by the key (created_at, id) (keyset pagination,
-- emeterai_shared.pagination). One index range scan per page however deep; it also serves what
-- orders_account (account_id, created_at DESC) did, so that index goes.
CREATE INDEX orders_account_history ON orders (account_id, created_at DESC, id DESC);
DROP INDEX IF EXISTS orders_account;
