-- Phone sign-in (POST /v1/auth/*): one-time codes, limits, sessions and refresh tokens.

-- Phones are kept in one form (+<country><number>, "08..." read as Indonesian "+628..."), so that
-- the same phone registered two ways is one phone for sign-in and the squatting rule.
UPDATE accounts SET phone = CASE WHEN phone LIKE '+%' THEN phone
                                 WHEN phone LIKE '0%' THEN '+62' || substr(phone, 2)
                                 ELSE '+' || phone END;
-- Set by the first sign-in with a code: from then on the account's tokens without a session (sid)
-- are refused (401 token_superseded), whoever registered the phone first.
ALTER TABLE accounts ADD COLUMN phone_verified_at timestamptz;
CREATE INDEX accounts_phone ON accounts (phone, created_at, id);

-- The pending code of a phone (at most one): only its keyed digest (HMAC-SHA256), never the code.
CREATE TABLE otp_codes (
    phone       text PRIMARY KEY,
    digest      bytea NOT NULL,
    expires_at  timestamptz NOT NULL,
    wrong_tries int NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Fixed-window counters of the sign-in limits (per phone, per client address), shared by every
-- api process; old windows are deleted by the worker's housekeeping.
CREATE TABLE auth_limits (
    key          text NOT NULL,
    window_start timestamptz NOT NULL,
    hits         int NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX auth_limits_window ON auth_limits (window_start);

CREATE TABLE sessions (
    sid        uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX sessions_account ON sessions (account_id) WHERE revoked_at IS NULL;

-- Refresh tokens by their SHA-256 (the token itself is never stored); each works once (used_at).
CREATE TABLE refresh_tokens (
    digest     bytea PRIMARY KEY,
    sid        uuid NOT NULL REFERENCES sessions (sid),
    account_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_sid ON refresh_tokens (sid);
