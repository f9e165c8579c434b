"""Phone sign-in: codes, sign-in, refresh with rotation and reuse detection, logout, and the
squatting rule's check, each inside the caller's unit of work.

Outcomes that must be kept although the caller is refused (a wrong try counted, sessions revoked
on a reused refresh token) are returned, not raised, so that the unit of work commits them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from emeterai_shared.auth import Caller, superseded
from emeterai_shared.contracts.events import AccountVerified
from emeterai_shared.uow import UnitOfWork

from order_service.adapters.signin_store import SigninRepository
from order_service.config import OrderSettings
from order_service.domain.signin import (
    CodeCheck,
    check_code,
    code_digest,
    code_request_limits,
    exceeded,
    new_code,
    new_refresh_token,
    refresh_digest,
    sms_text,
)

HOUSEKEEPING_KEEP_S = 2 * 3600
"""Limit windows, codes and refresh tokens are deleted this long after they stop mattering."""


@dataclass(frozen=True)
class Session:
    account_id: uuid.UUID
    sid: uuid.UUID
    refresh_token: str


@dataclass(frozen=True)
class Refused:
    code: str
    message: str


def _now() -> datetime:
    return datetime.now(UTC)


async def request_code(uow: UnitOfWork, phone: str, client: str, key: bytes, settings: OrderSettings) -> int | None:
    """Send a new code to ``phone`` (its text queued in ``sms_outbox``, which the worker's text
    dispatcher sends), unless a limit is reached: then the
    Retry-After in seconds, and nothing is sent. Known and unknown phones are treated alike.
    One statement on ``uow``'s connection, which needs no transaction."""
    now = _now()
    repo = SigninRepository(uow.conn)
    limits = code_request_limits(
        phone, client, per_phone=((1, settings.otp_phone_interval_s), (settings.otp_phone_per_hour, 3600)),
        per_client=((settings.otp_client_limit, settings.otp_client_window_s),))
    code = new_code()
    expires_at = now + timedelta(seconds=settings.otp_ttl_s)
    # one statement: the hits counted, and the code with its text only while every limit holds
    hits, sent = await repo.hit_and_put_code(limits, now, phone, code_digest(key, phone, code), expires_at,
                                             sms_text(code, settings.otp_ttl_s))
    retry_after = exceeded(limits, hits, now)
    if sent != (retry_after is None):
        raise RuntimeError(f"the code request's limits were judged apart: sent {sent}, retry after {retry_after}")
    return retry_after


async def _open_session(repo: SigninRepository, account_id: uuid.UUID, settings: OrderSettings,
                        now: datetime, sid: uuid.UUID | None = None, *, new_account_phone: str | None = None,
                        verified_at: datetime | None = None) -> Session:
    """A new refresh token: of a new session (``sid`` None; the account created or verified with
    it, see ``SigninRepository.start_session``), or of the session ``sid``."""
    token = new_refresh_token()
    expires_at = now + timedelta(seconds=settings.refresh_token_ttl_s)
    if sid is None:
        sid = uuid.uuid4()
        await repo.start_session(sid, account_id, refresh_digest(token), expires_at,
                                 new_account_phone=new_account_phone, verified_at=verified_at)
    else:
        await repo.add_refresh_token(refresh_digest(token), sid, account_id, expires_at)
    return Session(account_id, sid, token)


async def sign_in(uow: UnitOfWork, phone: str, code: str, key: bytes, settings: OrderSettings) -> Session | Refused:
    """A new session of the phone's account (created on its first sign-in), or why not.

    The phone's account is its verified one, else the oldest registered with that phone through
    ``POST /v1/accounts``; a first sign-in verifies it, which supersedes the account's tokens
    without a session (announced as ``order.account_verified.v1`` for the other services)."""
    now = _now()
    repo = SigninRepository(uow.conn)
    verdict = check_code(key, phone, code, await repo.pending_code(phone), now)
    if verdict is CodeCheck.WRONG:
        await repo.wrong_try(phone)
    if verdict is not CodeCheck.ACCEPTED:
        return Refused("invalid_code", "the code is wrong, used or expired; request a new one after 5 wrong tries")
    found = await repo.use_code_and_find_account(phone)
    if found is None:  # the phone's first account: created verified, with the session
        return await _open_session(repo, uuid.uuid4(), settings, now, new_account_phone=phone, verified_at=now)
    account_id, verified_at = found
    if verified_at is not None:
        return await _open_session(repo, account_id, settings, now)
    uow.publish(AccountVerified(account_id=account_id, verified_at=now), correlation_id=str(account_id))
    return await _open_session(repo, account_id, settings, now, verified_at=now)


async def refresh(uow: UnitOfWork, token: str, settings: OrderSettings) -> Session | Refused:
    """A new refresh token of the same session, the presented one used up. A token presented a
    second time means it was stolen (or the client is broken): every session of the account is
    revoked, and the answer is a refusal."""
    now = _now()
    repo = SigninRepository(uow.conn)
    digest = refresh_digest(token)
    row = await repo.refresh_token(digest)
    if row is None or row["revoked_at"] is not None or row["expires_at"] <= now:
        return Refused("invalid_refresh_token", "the refresh token is unknown, expired or revoked: sign in again")
    if row["used_at"] is not None:
        await repo.revoke_all_sessions(row["account_id"], now)
        return Refused("refresh_token_reused", "this refresh token was already used: every session of the "
                       "account is revoked; sign in again")
    await repo.use_refresh_token(digest, now)
    return await _open_session(repo, row["account_id"], settings, now, sid=row["sid"])


async def logout(uow: UnitOfWork, caller: Caller) -> None:
    """Revoke the caller's session: its refresh tokens stop working (its access token lives on
    until it expires, at most ``access_token_ttl_s``)."""
    if caller.sid is None:
        return
    try:
        sid = uuid.UUID(caller.sid)
    except ValueError:
        return
    await SigninRepository(uow.conn).revoke_session(sid, caller.account_id, _now())


async def ensure_current(uow: UnitOfWork, caller: Caller) -> None:
    """401 ``token_superseded`` for a token without a session of an account whose phone was
    verified since (one indexed lookup, only for such tokens)."""
    if caller.unproven:
        superseded(caller, await SigninRepository(uow.conn).phone_verified_at(caller.account_id))


async def housekeeping(uow: UnitOfWork) -> None:
    await SigninRepository(uow.conn).forget_old(_now(), HOUSEKEEPING_KEEP_S)
