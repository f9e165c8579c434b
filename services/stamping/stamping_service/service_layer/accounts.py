"""The squatting rule at the stamping service's buyer endpoints: once the order service announces
that an account's phone was verified by a sign-in (``order.account_verified.v1``), the account's
tokens without a sign-in session (``POST /v1/accounts`` tokens, which prove nothing about the
phone) are refused with 401 ``token_superseded``."""

from __future__ import annotations

from emeterai_shared.auth import Caller, superseded
from emeterai_shared.uow import UnitOfWork

from stamping_service.adapters.accounts import VerifiedAccounts


async def ensure_current(uow: UnitOfWork, caller: Caller) -> None:
    """401 ``token_superseded`` when the caller's token has no session and its account was
    verified since (one primary-key lookup, only for such tokens)."""
    if caller.unproven:
        superseded(caller, await VerifiedAccounts(uow.conn).verified_at(caller.account_id))
