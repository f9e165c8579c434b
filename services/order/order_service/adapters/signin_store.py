"""Sign-in state in PostgreSQL: pending codes, limit counters, sessions, refresh tokens, and the
accounts' verified phones, over one connection (the caller's transaction)."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from order_service.domain.signin import Limit, PendingCode


class SigninRepository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    # --- limits --------------------------------------------------------------------------------

    async def hit_and_put_code(self, limits: list[Limit], now: datetime, phone: str, digest: bytes,
                               expires_at: datetime, text: str) -> tuple[dict[str, int], bool]:
        """Count one hit against each limit's current window (the counts after it, by key, are
        returned); then, only when every limit holds after the hits, make the code the phone's
        pending one (replacing any earlier one and its wrong tries) and queue ``text`` (the text
        with the code) in ``sms_outbox`` for the text dispatcher: one statement, so no transaction
        around it.
        A limit holds while its hits are at most its ``limit``: the rule of
        ``domain.signin.exceeded``, which the caller applies to the counts returned, and which must
        agree with the second value returned (whether the code was put and the text written)."""
        row = await self.conn.fetchrow(
            """WITH hits AS (
                    INSERT INTO auth_limits AS l (key, window_start, hits)
                    SELECT k, w, 1 FROM unnest($1::text[], $2::timestamptz[]) AS t (k, w)
                    ON CONFLICT (key, window_start) DO UPDATE SET hits = l.hits + 1
                    RETURNING key, hits),
                held AS (
                    SELECT NOT EXISTS (SELECT FROM hits h JOIN unnest($1::text[], $3::int[]) AS m (k, n) ON m.k = h.key
                                       WHERE h.hits > m.n) AS ok),
                code AS (
                    INSERT INTO otp_codes (phone, digest, expires_at)
                    SELECT $4::text, $5::bytea, $6::timestamptz FROM held WHERE ok
                    ON CONFLICT (phone) DO UPDATE SET digest = EXCLUDED.digest, expires_at = EXCLUDED.expires_at,
                                                      wrong_tries = 0, created_at = now()),
                texted AS (
                    INSERT INTO sms_outbox (phone, body, requested_at, expires_at)
                    SELECT $4::text, $7::text, $8::timestamptz, $6::timestamptz FROM held WHERE ok)
                SELECT (SELECT ok FROM held) AS sent,
                       (SELECT coalesce(jsonb_object_agg(key, hits), '{}') FROM hits) AS hits""",
            [limit.key for limit in limits], [limit.window_start(now) for limit in limits],
            [limit.limit for limit in limits], phone, digest, expires_at, text, now)
        return {k: int(v) for k, v in row["hits"].items()}, bool(row["sent"])

    # --- codes ---------------------------------------------------------------------------------

    async def pending_code(self, phone: str) -> PendingCode | None:
        """The phone's pending code, locked until the transaction ends."""
        row = await self.conn.fetchrow(
            "SELECT digest, expires_at, wrong_tries FROM otp_codes WHERE phone = $1 FOR UPDATE", phone)
        return PendingCode(bytes(row["digest"]), row["expires_at"], row["wrong_tries"]) if row else None

    async def wrong_try(self, phone: str) -> int:
        return int(await self.conn.fetchval(
            "UPDATE otp_codes SET wrong_tries = wrong_tries + 1 WHERE phone = $1 RETURNING wrong_tries", phone) or 0)

    # --- accounts ------------------------------------------------------------------------------

    async def use_code_and_find_account(self, phone: str) -> tuple[uuid.UUID, datetime | None] | None:
        """Use up the phone's code (deleted) and find the phone's account, locked: the verified one,
        else the oldest registered with it; one round trip."""
        row = await self.conn.fetchrow(
            """WITH used AS (DELETE FROM otp_codes WHERE phone = $1)
               SELECT id, phone_verified_at FROM accounts WHERE phone = $1
               ORDER BY phone_verified_at IS NULL, created_at, id LIMIT 1 FOR UPDATE""", phone)
        return (row["id"], row["phone_verified_at"]) if row else None

    async def phone_verified_at(self, account_id: uuid.UUID) -> datetime | None:
        value: datetime | None = await self.conn.fetchval(
            "SELECT phone_verified_at FROM accounts WHERE id = $1", account_id)
        return value

    # --- sessions and refresh tokens -----------------------------------------------------------

    async def start_session(self, sid: uuid.UUID, account_id: uuid.UUID, digest: bytes, expires_at: datetime, *,
                            new_account_phone: str | None = None, verified_at: datetime | None = None) -> None:
        """A new session of the account with its first refresh token, in one statement; with
        ``new_account_phone`` the account is created first, verified at ``verified_at``; with
        ``verified_at`` alone the existing (locked) account is verified then. Each part is a
        data-modifying CTE that writes only when its parameter asks for it (foreign keys are checked
        at the end of the statement, so the session may reference the account created beside it)."""
        await self.conn.execute(
            """WITH account AS (
                   INSERT INTO accounts (id, name, phone, phone_verified_at)
                   SELECT $2, '', $5::text, $6::timestamptz WHERE $5::text IS NOT NULL),
               verified AS (
                   UPDATE accounts SET phone_verified_at = $6::timestamptz
                   WHERE id = $2 AND $5::text IS NULL AND $6::timestamptz IS NOT NULL),
               session AS (INSERT INTO sessions (sid, account_id) VALUES ($1, $2))
               INSERT INTO refresh_tokens (digest, sid, account_id, expires_at) VALUES ($3, $1, $2, $4)""",
            sid, account_id, digest, expires_at, new_account_phone, verified_at)

    async def add_refresh_token(self, digest: bytes, sid: uuid.UUID, account_id: uuid.UUID,
                                expires_at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO refresh_tokens (digest, sid, account_id, expires_at) VALUES ($1, $2, $3, $4)",
            digest, sid, account_id, expires_at)

    async def refresh_token(self, digest: bytes) -> asyncpg.Record | None:
        """The token with its session, locked: ``sid, account_id, expires_at, used_at, revoked_at``."""
        row: asyncpg.Record | None = await self.conn.fetchrow(
            """SELECT t.sid, t.account_id, t.expires_at, t.used_at, s.revoked_at
               FROM refresh_tokens t JOIN sessions s ON s.sid = t.sid
               WHERE t.digest = $1 FOR UPDATE OF t, s""", digest)
        return row

    async def use_refresh_token(self, digest: bytes, now: datetime) -> None:
        await self.conn.execute("UPDATE refresh_tokens SET used_at = $2 WHERE digest = $1", digest, now)

    async def revoke_session(self, sid: uuid.UUID, account_id: uuid.UUID, now: datetime) -> None:
        await self.conn.execute(
            "UPDATE sessions SET revoked_at = $3 WHERE sid = $1 AND account_id = $2 AND revoked_at IS NULL",
            sid, account_id, now)

    async def revoke_all_sessions(self, account_id: uuid.UUID, now: datetime) -> int:
        status: str = await self.conn.execute(
            "UPDATE sessions SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL", account_id, now)
        return int(status.split()[-1])

    # --- housekeeping --------------------------------------------------------------------------

    async def forget_old(self, now: datetime, keep_s: int) -> None:
        """Delete limit windows, codes, refresh tokens and failed texts past use for ``keep_s`` seconds."""
        for table, column in (("auth_limits", "window_start"), ("otp_codes", "expires_at"),
                              ("refresh_tokens", "expires_at"), ("sms_outbox", "failed_at")):
            await self.conn.execute(
                f"DELETE FROM {table} WHERE {column} < $1::timestamptz - make_interval(secs => $2::float8)",
                now, float(keep_s))
