"""Serials given back by their order (``order.serials_void_requested.v1``), against the real servers.

Stamping decides what can still be voided, because a stamp is used here: UNUSED stamps of that
order leave the quota (VOID), a stamp reserved by a stamping in progress or already USED is kept,
a serial not received yet is recorded VOID (its late ``minting.serials_issued.v1`` copy credits
nothing), a serial of another order is left alone; one ``stamping.serials_voided.v1`` answers
with the voided and the kept serials, for minting (registry VOID) and the order (refund).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from emeterai_shared.contracts import decode
from emeterai_shared.contracts.events import IssuedSerial, SerialsIssued, SerialsVoided, SerialsVoidRequested
from emeterai_testkit.documents import sample_pdf
from emeterai_testkit.fixtures import eventually, running
from stamping_service.adapters.stampings import StampingRepository
from stamping_service.bootstrap import SERVICE

if TYPE_CHECKING:
    from conftest import Stamping

ON_SERIALS_VOID_REQUESTED = "stamping.on_serials_void_requested"


async def status_of(stamping: Stamping, sns: list[str]) -> dict[str, str]:
    return dict(await stamping.pool.fetch("SELECT sn, status FROM stamps WHERE sn = ANY($1)", sns))


async def test_unused_stamps_are_voided_and_stamps_in_use_are_kept(stamping: Stamping) -> None:
    account, neighbour = uuid.uuid4(), uuid.uuid4()
    order = stamping.issued(account, 4)
    other = stamping.issued(neighbour, 1)
    await stamping.send(order)
    await stamping.send(other)
    unused, spare, reserved, used = sorted(s.sn for s in order.serials)
    [foreign] = [s.sn for s in other.serials]

    async with running(SERVICE, stamping.settings, worker=False, relay=True):  # the upload's job reaches the worker
        status, body = await stamping.upload(account, sample_pdf(1), sn=used)
        assert status == 202, body
        await eventually(lambda: stamping.pool.fetchval("SELECT status = 'USED' FROM stamps WHERE sn = $1", used),
                         message="the stamping to finish")
    async with stamping.pool.acquire() as conn:
        assert await StampingRepository(conn).reserve(account, reserved) == reserved  # a stamping in progress

    late = IssuedSerial(sn=f"LATE{uuid.uuid4().hex[:18].upper()}", token="eyJ.late.sig")
    request = SerialsVoidRequested(order_id=order.order_id, account_id=account,
                                   serials=(unused, reserved, used, late.sn, foreign),
                                   reason="cannot accept the serials issued", requested_at=datetime.now(UTC))
    mid = await stamping.publish(request)
    await stamping.applied(ON_SERIALS_VOID_REQUESTED, mid)

    assert await status_of(stamping, [unused, spare, reserved, used, late.sn, foreign]) == {
        unused: "VOID", spare: "UNUSED", reserved: "RESERVED", used: "USED", late.sn: "VOID", foreign: "UNUSED"}
    [row] = await stamping.pool.fetch("SELECT body FROM outbox WHERE message_type = $1 AND correlation_id = $2",
                                      SerialsVoided.TYPE, str(order.order_id))
    answer = decode(SerialsVoided.TYPE, row["body"])
    assert isinstance(answer, SerialsVoided)
    assert (answer.order_id, answer.account_id, answer.reason) == (order.order_id, account, request.reason)
    assert (answer.voided, answer.kept) == ((unused, late.sn, foreign), (reserved, used))
    quota = await stamping.quota(account)
    assert (quota["available"], quota["serials_available"]) == (1, [spare])
    assert (await stamping.quota(neighbour))["serials_available"] == [foreign]

    # The serial's own issuance copy arrives after the void: it stays VOID, the quota is unchanged.
    await stamping.send(SerialsIssued(order_id=order.order_id, account_id=account, serials=(late,),
                                      issued_at=datetime.now(UTC)))
    assert await status_of(stamping, [late.sn]) == {late.sn: "VOID"}
    assert (await stamping.quota(account))["serials_available"] == [spare]
    status, body = await stamping.upload(account, sample_pdf(1), sn=unused)
    assert status == 409, body


async def test_a_buyers_refund_is_answered_with_its_refund_id(stamping: Stamping) -> None:
    """The void request of a buyer's refund of unused stamps carries the order's refund id, and so
    does the answer, for the order to settle that refund."""
    account = uuid.uuid4()
    order = stamping.issued(account, 2)
    await stamping.send(order)
    first, second = sorted(s.sn for s in order.serials)
    async with stamping.pool.acquire() as conn:
        assert await StampingRepository(conn).reserve(account, first) == first  # being used right now
    refund_id = uuid.uuid4()
    request = SerialsVoidRequested(order_id=order.order_id, account_id=account, serials=(first, second),
                                   reason="refund of unused stamps requested by the buyer",
                                   requested_at=datetime.now(UTC), refund_id=refund_id)
    await stamping.applied(ON_SERIALS_VOID_REQUESTED, await stamping.publish(request))
    [row] = await stamping.pool.fetch("SELECT body FROM outbox WHERE message_type = $1 AND correlation_id = $2",
                                      SerialsVoided.TYPE, str(order.order_id))
    answer = decode(SerialsVoided.TYPE, row["body"])
    assert isinstance(answer, SerialsVoided)
    assert (answer.refund_id, answer.voided, answer.kept) == (refund_id, (second,), (first,))
    assert (await stamping.quota(account))["serials_available"] == []
