-- Accounts whose phone was verified by a sign-in with a code (order.account_verified): their tokens
-- without a sign-in session (sid) are refused at the buyer endpoints (401 token_superseded).
CREATE TABLE verified_accounts (
    account_id  uuid PRIMARY KEY,
    verified_at timestamptz NOT NULL
);
