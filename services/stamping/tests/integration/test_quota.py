"""The quota projection: minting's serials become each account's stamps; ``GET /v1/quota``.

* SerialsIssued for two accounts → each sees only its own serials, UNUSED, oldest first, with
  the order and token recorded;
* the same message again (inbox) and the same issuance under a new message id (primary key)
  change nothing;
* a serial already owned by another account parks the message and changes nothing;
* no token, a malformed one, one signed by another key, or a tampered one → 401;
* a process whose public key file is missing fails at start with a clear message.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aio_pika
import pytest
from emeterai_shared.auth import TokenIssuer, ensure_keypair
from emeterai_shared.contracts.events import SerialsIssued
from emeterai_shared.messaging.parking import ParkedMessage, list_parked
from emeterai_shared.runtime import Resources
from emeterai_testkit.fixtures import eventually, settings_for
from stamping_service.bootstrap import SERVICE
from stamping_service.config import StampingSettings
from stamping_service.entrypoints.messages import ON_SERIALS_ISSUED

if TYPE_CHECKING:
    from conftest import Stamping


def rows_of(event: SerialsIssued) -> list[tuple[str, uuid.UUID, uuid.UUID, str, str]]:
    return sorted((s.sn, event.account_id, event.order_id, s.token, "UNUSED") for s in event.serials)


async def test_each_account_sees_only_its_own_serials(stamping: Stamping) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    assert await stamping.quota(alice) == {"available": 0, "used": 0, "serials_available": []}

    first, second, bobs = stamping.issued(alice, 3), stamping.issued(alice, 2), stamping.issued(bob, 4)
    await stamping.send(first)
    await stamping.send(bobs)
    await stamping.send(second)

    in_order = sorted(s.sn for s in first.serials) + sorted(s.sn for s in second.serials)
    quota = await stamping.quota(alice)
    assert (quota["available"], quota["used"]) == (5, 0)
    assert quota["serials_available"] == in_order  # oldest issuance first, then by serial
    assert await stamping.quota(bob) == {"available": 4, "used": 0,
                                         "serials_available": sorted(s.sn for s in bobs.serials)}
    assert await stamping.rows(alice) == sorted(rows_of(first) + rows_of(second))
    assert await stamping.rows(bob) == rows_of(bobs)


async def test_redelivery_changes_nothing(stamping: Stamping) -> None:
    account = uuid.uuid4()
    event = stamping.issued(account, 3)
    mid = await stamping.send(event)
    before = await stamping.quota(account)
    assert before["available"] == 3

    await stamping.redeliver(event, mid)  # the very same message: the inbox absorbs it
    await stamping.send(event)  # the same issuance under a new message id: the serials are known
    assert await stamping.quota(account) == before
    assert await stamping.rows(account) == rows_of(event)


async def test_a_serial_owned_by_another_account_parks_the_message(stamping: Stamping) -> None:
    owner, other = uuid.uuid4(), uuid.uuid4()
    event = stamping.issued(owner, 2)
    await stamping.send(event)
    clash = stamping.issued(other, 2)
    clash = clash.model_copy(update={"serials": (clash.serials[0], event.serials[1])})
    mid = await stamping.publish(clash)

    connection = await aio_pika.connect_robust(stamping.settings.amqp_url)
    try:
        async def found() -> list[ParkedMessage]:
            return [m for m in await list_parked(connection, ON_SERIALS_ISSUED) if m.message_id == mid]

        parked: list[ParkedMessage] = await eventually(found, message=f"{mid} parked")
    finally:
        await connection.close()
    assert "another account" in str(parked[0].reason)
    assert await stamping.rows(other) == []
    assert await stamping.rows(owner) == rows_of(event)
    assert await stamping.quota(other) == {"available": 0, "used": 0, "serials_available": []}


def _tampered(token: str, account_id: uuid.UUID) -> str:
    """``token`` with its subject replaced and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(account_id)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_quota_needs_a_valid_token(stamping: Stamping, tmp_path: Path) -> None:
    victim = uuid.uuid4()
    await stamping.send(stamping.issued(victim, 1))

    status, body = await stamping.get_quota()
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body = await stamping.get_quota({"Authorization": "Basic dXNlcjpwYXNz"})
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body = await stamping.get_quota({"Authorization": "Bearer not-a-jwt"})
    assert (status, body["error"]["code"]) == (401, "invalid_token")

    # signed by a key the order service never published
    assert ensure_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    rogue = TokenIssuer((tmp_path / "rogue.key").read_bytes(), timedelta(minutes=5))
    status, body = await stamping.get_quota({"Authorization": f"Bearer {rogue.issue(victim)}"})
    assert (status, body["error"]["code"]) == (401, "invalid_token")

    # a genuine token of another account, its subject rewritten to the victim's
    forged = _tampered(stamping.issuer.issue(uuid.uuid4()), victim)
    status, body = await stamping.get_quota({"Authorization": f"Bearer {forged}"})
    assert (status, body["error"]["code"]) == (401, "invalid_token")

    assert (await stamping.quota(victim))["available"] == 1


async def test_a_process_without_the_public_key_fails_at_start(tmp_path: Path) -> None:
    settings = settings_for(StampingSettings, secrets_dir=str(tmp_path))
    resources = Resources(settings=settings, pool=None)  # fails before any use of the pool
    with pytest.raises(RuntimeError, match=r"auth-ed25519\.pub does not exist"):
        await SERVICE.dependencies(resources)
    assert resources.closers == [] and not (tmp_path / "auth-ed25519.pub").exists()  # no keys created
