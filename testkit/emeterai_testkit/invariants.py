"""The platform invariants, written once, read from the four services' databases and the broker.

Used by ``make chaos``/``tests/test_chaos.py`` (``evaluate``: the checks, after quiescence), by
the rush (``lost`` and ``duplicates``: the report's ``lost``/``lost_detail`` and
``duplicates``/``duplicates_detail``, over the whole databases) and by tests.

``snapshot`` reads everything once (uuid columns as text); the rest are pure functions of it:

- money: every captured payment ends **credited** (order FULFILLED with its ``quantity`` serials,
  the same in ``orders.serials`` and ``order_serials``, each issued by minting to that order, and
  each known to the buyer's stamping quota) or **refunded** (a refund recorded for that payment,
  or the order REFUNDED); anything else is **lost**. A lost payment whose only pending step is a
  parked money-carrying message (an outbox row the relay parked, a message in a parking queue) is
  **stranded**: lost whatever the wait, and it names its parked message;
- serials: none issued twice, in two orders, or used by two DONE stampings, each way it could show;
- buyers' refunds of unused stamps: every refunded serial is VOID in the registry and in the quota
  and was never stamped; the captured money of an order equals its credited stamps plus its
  refunds (each refund paid out by the payment service for the per-stamp price of the serials it
  voided). A refund not settled yet (voided serials not paid out) leaves its payment unresolved,
  and, behind a parked message, stranded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import asyncpg
from aio_pika.exceptions import ChannelNotFoundEntity
from emeterai_shared.messaging import connect
from emeterai_shared.messaging.parking import list_parked
from emeterai_shared.stranding import (
    ParkedWork,
    live_outbox_orders,
    parked_from_queues,
    parked_outbox,
    stranded,
)

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

SERVICES = ("order", "payment", "minting", "stamping")
Pools = Mapping[str, asyncpg.Pool]
"""service name -> a pool on that service's database."""
TRANSIENT = (asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError,
             asyncpg.InterfaceError, ConnectionError, OSError, TimeoutError)
RETRY_FOR_S = 120.0


def retrying(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Retry a read while PostgreSQL refuses connections (it is shared: other sessions' tests
    and the platform itself may hold every slot for a while, or it is restarting)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.2
        while True:
            try:
                return await method(*args, **kwargs)
            except TRANSIENT as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("%s: %r, retrying", method.__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper


@retrying
async def open_pools(urls: Mapping[str, str]) -> dict[str, asyncpg.Pool]:
    """One small pool per service database (``urls``: service -> database URL)."""
    names = [s for s in SERVICES if s in urls]
    pools = await asyncio.gather(*(asyncpg.create_pool(urls[s], min_size=1, max_size=1) for s in names))
    return dict(zip(names, pools, strict=True))


@contextlib.asynccontextmanager
async def pools_of(urls: Mapping[str, str]) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    pools = await open_pools(urls)
    try:
        yield pools
    finally:
        await asyncio.gather(*(p.close() for p in pools.values()), return_exceptions=True)


def consumer_queues() -> list[str]:
    """Every consumer queue of the four services (their ``.parking`` queues hold parked work)."""
    from emeterai_testkit.platform import definitions

    return [sub.queue for defn, _ in definitions().values() for sub in defn.subscriptions]


# --- reading -----------------------------------------------------------------------------------------------

OUTBOX_STATS = """SELECT count(*) FILTER (WHERE parked_at IS NULL) AS backlog,
                         count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
                         coalesce(round(extract(epoch FROM now() - min(created_at)
                             FILTER (WHERE parked_at IS NULL))), 0)::int AS oldest_s
                  FROM outbox WHERE sent_at IS NULL"""

QUERIES: dict[str, tuple[str, str]] = {
    "payments": ("payment", "SELECT payment_id::text AS payment_id, bill_id::text AS bill_id,"
                            " order_id::text AS order_id, client_id, payment_request_id, amount, late FROM payments"),
    "refunds": ("payment", "SELECT refund_id::text AS refund_id, order_id::text AS order_id,"
                           " payment_id::text AS payment_id, amount, reason FROM refunds"),
    "bills": ("payment", "SELECT bill_id::text AS bill_id, order_id::text AS order_id, status, quantity, method"
                         " FROM bills"),
    "orders": ("order", "SELECT id::text AS id, account_id::text AS account_id, status, quantity, serials,"
                        " payment_id::text AS payment_id, billed_at, failure_reason FROM orders"),
    "order_serials": ("order", "SELECT sn, order_id::text AS order_id FROM order_serials"),
    "serials": ("minting", "SELECT sn, status, order_id::text AS order_id, stamping_id::text AS stamping_id,"
                           " document_sha256 FROM serials WHERE status <> 'STOCK'"),
    "issuances": ("minting", "SELECT order_id::text AS order_id, account_id::text AS account_id, quantity, status,"
                             " reason FROM issuances"),
    "reuse_attempts": ("minting", "SELECT sn, stamping_id::text AS stamping_id, found_status FROM reuse_attempts"),
    "stamps": ("stamping", "SELECT sn, account_id::text AS account_id, order_id::text AS order_id, status FROM stamps"),
    "buyer_refunds": ("order", "SELECT refund_id::text AS refund_id, order_id::text AS order_id, status, requested,"
                               " voided, kept, amount FROM refunds WHERE kind = 'stamps'"),
    "partial_refunds": ("payment", "SELECT refund_id::text AS refund_id, order_id::text AS order_id, amount, status,"
                                   " serials FROM partial_refunds"),
    "stampings": ("stamping", "SELECT id::text AS id, account_id::text AS account_id, sn, status, error,"
                              " stamped_sha256, attempts FROM stampings"),
}


async def queue_depths(vhost: str) -> dict[str, int]:
    """Messages (ready and unacknowledged) of every queue of ``vhost``, from rabbitmqctl."""
    done = await asyncio.to_thread(
        subprocess.run, ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers", "name", "messages"],
        capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl list_queues failed: {done.stderr.strip()}")
    depths = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            depths[parts[0]] = int(parts[1])
    return depths


@retrying
async def outbox_stats(pools: Pools) -> dict[str, dict[str, Any]]:
    """Per service: unpublished rows (``backlog``), ``parked`` rows, age of the oldest (``oldest_s``)."""
    stats: dict[str, dict[str, Any]] = {}
    for svc, pool in pools.items():
        row = await pool.fetchrow(OUTBOX_STATS)
        stats[svc] = dict(row) if row is not None else {"backlog": 0, "parked": 0, "oldest_s": 0}
    return stats


async def parked_messages(amqp_url: str, queues: Iterable[str], limit: int = 1000) -> list[dict[str, Any]]:
    """Summaries of the messages parked for ``queues`` (they all stay parked), with their body."""
    found: list[dict[str, Any]] = []
    connection = await connect(amqp_url, name="invariants")
    try:
        for queue in queues:
            try:
                messages = await list_parked(connection, queue, limit=limit)
            except ChannelNotFoundEntity:  # never declared here: nothing was parked in it
                continue
            found += [{"service": queue.split(".", 1)[0], **m.summary(), "body": m.body} for m in messages]
    finally:
        await connection.close()
    return found


@retrying
async def parked_work(pools: Pools, amqp_url: str | None, queues: Sequence[str]) -> tuple[list[ParkedWork], set[str]]:
    """The money-carrying parked work (outbox rows the relays parked, messages in the parking
    queues of ``queues``) and the orders with outbox rows still to publish (work still moving)."""
    parked: list[ParkedWork] = []
    live: set[str] = set()
    for service, pool in pools.items():
        parked += await parked_outbox(pool, service)
        live |= await live_outbox_orders(pool)
    if amqp_url and queues:
        parked += parked_from_queues(await parked_messages(amqp_url, queues))
    return parked, live


@retrying
async def snapshot(pools: Pools, *, amqp_url: str | None, queues: Sequence[str],
                   vhost: str | None = None) -> dict[str, Any]:
    """Everything the invariants read, from the four databases (``pools``) and the broker (the
    parking queues of ``queues`` on ``amqp_url``; with ``vhost``, every queue's depth too)."""
    data: dict[str, Any] = {}
    for key, (service, query) in QUERIES.items():
        data[key] = [dict(r) for r in await pools[service].fetch(query)]
    data["outbox"] = await outbox_stats(pools)
    data["queues"] = await queue_depths(vhost) if vhost else {}
    messages = await parked_messages(amqp_url, queues) if amqp_url and queues else []
    data["parked"] = [{k: v for k, v in m.items() if k != "body"} for m in messages]
    data["parked_money"] = parked_from_queues(messages)
    data["parked_outbox"], data["live_orders"] = [], set()
    for service, pool in pools.items():
        data["parked_outbox"] += await parked_outbox(pool, service)
        data["live_orders"] |= await live_outbox_orders(pool)
    return data


# --- money: credited, refunded or lost ---------------------------------------------------------------------


@dataclass
class Money:
    """Every captured payment, classified."""

    captured: int = 0
    credited: int = 0
    refunded: list[dict[str, Any]] = field(default_factory=list)
    """The refunded payments (their rows)."""
    lost: list[dict[str, Any]] = field(default_factory=list)
    """The lost payments: ``order_id``, ``status``, ``serials``, ``quota``, ``detail`` and, when
    stranded, ``parked`` (what holds it)."""
    stranded: dict[str, list[ParkedWork]] = field(default_factory=dict)
    by_method: dict[str, Counter[str]] = field(default_factory=dict)
    """Per payment method of the bill (``va``, ``qris``): ``captured``, ``credited``, ``refunded``, ``lost``."""


def money(data: Mapping[str, Any]) -> Money:
    orders = {r["id"]: r for r in data["orders"]}
    refunds = {r["order_id"]: r for r in data["refunds"]}
    quantity = {r["bill_id"]: r["quantity"] for r in data["bills"]}
    methods = {r["bill_id"]: r.get("method") or "va" for r in data["bills"]}
    order_serials: dict[str, list[str]] = {}
    for r in data["order_serials"]:
        order_serials.setdefault(r["order_id"], []).append(r["sn"])
    minted = {r["sn"]: r for r in data["serials"]}
    quota = Counter(r["order_id"] for r in data["stamps"])
    unsettled_refunds = unsettled(data)
    out = Money(captured=len(data["payments"]))
    for p in data["payments"]:
        oid = p["order_id"]
        o = orders.get(oid)
        sns = order_serials.get(oid, [])
        wanted = quantity.get(p["bill_id"], o["quantity"] if o else None)
        refund = refunds.get(oid)
        pending_refunds = unsettled_refunds.get(oid)
        tally = out.by_method.setdefault(methods.get(p["bill_id"], "va"), Counter())
        tally["captured"] += 1
        if (o is not None and o["status"] == "FULFILLED" and len(o["serials"]) == o["quantity"] == wanted
                and sorted(o["serials"]) == sorted(sns) and quota.get(oid, 0) == wanted
                and all(minted.get(sn, {}).get("order_id") == oid for sn in sns) and not pending_refunds):
            out.credited += 1
            tally["credited"] += 1
        elif (refund is not None and refund["payment_id"] in (p["payment_id"], None)) or (
                o is not None and o["status"] == "REFUNDED"):
            out.refunded.append(p)
            tally["refunded"] += 1
        else:
            tally["lost"] += 1
            out.lost.append({
                "order_id": oid, "status": o["status"] if o else None, "serials": len(sns) if o else None,
                "quota": quota.get(oid, 0),
                "detail": f"payment {p['payment_id']} captured, order {o['status'] if o else 'missing'} with "
                          f"{len(o['serials']) if o else 0} serial(s), {len(sns)} in order_serials, "
                          f"{quota.get(oid, 0)} in the stamping quota, "
                          + (f"refund(s) of unused stamps not paid out: {', '.join(pending_refunds)}"
                             if pending_refunds else "no refund")})
    if out.lost:
        parked = [*data.get("parked_outbox", []), *data.get("parked_money", [])]
        out.stranded = stranded((e["order_id"] for e in out.lost), parked, data.get("live_orders", set()))
        for entry in out.lost:
            if entry["order_id"] in out.stranded:
                entry["parked"] = [work.describe() for work in out.stranded[entry["order_id"]]]
    return out


def unsettled(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """Buyers' refunds of unused stamps still on their way, by order: not decided by stamping yet
    (REQUESTED), or voided serials whose payout has not reached the order (PAYING)."""
    out: dict[str, list[str]] = {}
    for r in data.get("buyer_refunds", ()):
        if r["status"] in ("REQUESTED", "PAYING"):
            out.setdefault(r["order_id"], []).append(f"{r['refund_id']} {r['status']}")
    return out


def refunds(data: Mapping[str, Any]) -> dict[str, Any]:
    """The rush report's figures on buyers' refunds of unused stamps."""
    rows = data.get("buyer_refunds", ())
    return {"requested": len(rows), "by_status": dict(Counter(r["status"] for r in rows)),
            "serials_refunded": sum(len(r["voided"]) for r in rows if r["status"] in ("PAYING", "PAID_OUT")),
            "amount_paid_out": sum(r["amount"] for r in data.get("partial_refunds", ()) if r["status"] == "PAID_OUT")}


def refund_violations(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each way a buyer's refund could break the rules, with the cases: a refunded serial not VOID
    in the registry, stamped (registry or a DONE stamping), or still in the quota; the money of a
    refund different from the per-stamp price of the serials it voided (order vs payment); an
    order's refunds past its captured payment."""
    minted = {r["sn"]: r for r in data["serials"]}
    stamps = {r["sn"]: r for r in data["stamps"]}
    done = {j["sn"] for j in data["stampings"] if j["status"] == "DONE"}
    payments = {p["order_id"]: p for p in data["payments"]}
    quantities = {o["id"]: o["quantity"] for o in data["orders"]}
    paid = {r["refund_id"]: r for r in data.get("partial_refunds", ())}
    out: dict[str, list[str]] = {"refunded_serial_not_void_in_registry": [], "refunded_serial_stamped": [],
                                 "refunded_serial_in_quota": [], "refund_amount_mismatch": [],
                                 "refunds_exceed_payment": []}
    per_order: Counter[str] = Counter()
    for r in data.get("buyer_refunds", ()):
        if r["status"] not in ("PAYING", "PAID_OUT"):
            continue
        for sn in r["voided"]:
            if minted.get(sn, {}).get("status") != "VOID":
                out["refunded_serial_not_void_in_registry"].append(f"{sn} ({minted.get(sn, {}).get('status')})")
            if sn in done or minted.get(sn, {}).get("status") == "STAMPED":
                out["refunded_serial_stamped"].append(f"{sn} (refund {r['refund_id']})")
            if stamps.get(sn, {}).get("status") != "VOID":
                out["refunded_serial_in_quota"].append(f"{sn} ({stamps.get(sn, {}).get('status')})")
        p, q = payments.get(r["order_id"]), quantities.get(r["order_id"])
        per_stamp = p["amount"] // q if p and q else None
        payout = paid.get(r["refund_id"])
        if per_stamp is None or r["amount"] != per_stamp * len(r["voided"]) or (
                payout is not None and (payout["amount"] != r["amount"]
                                        or sorted(payout["serials"]) != sorted(r["voided"]))):
            out["refund_amount_mismatch"].append(
                f"refund {r['refund_id']}: {len(r['voided'])} voided, order says {r['amount']}, payment "
                f"{payout and payout['amount']}, per stamp {per_stamp}")
    for r in data.get("partial_refunds", ()):
        per_order[r["order_id"]] += r["amount"]
    for r in data["refunds"]:
        per_order[r["order_id"]] += r["amount"]
    out["refunds_exceed_payment"] = [f"order {oid}: {n} refunded of {payments[oid]['amount']} captured"
                                     for oid, n in per_order.items() if oid in payments and n > payments[oid]["amount"]]
    return out


def lost(data: Mapping[str, Any]) -> dict[str, Any]:
    """The rush report's money figures: ``captured``, ``credited``, ``refunded``, ``stranded``,
    ``by_method`` (the same per payment method: ``va``, ``qris``), ``lost_orders`` (each:
    ``order_id``, ``status``, ``serials``, ``quota``, ``parked`` if stranded)."""
    m = money(data)
    by_method = {method: {k: tally.get(k, 0) for k in ("captured", "credited", "refunded", "lost")}
                 for method, tally in sorted(m.by_method.items())}
    return {"captured": m.captured, "credited": m.credited, "refunded": len(m.refunded), "stranded": len(m.stranded),
            "by_method": by_method,
            "lost_orders": [{k: v for k, v in e.items() if k != "detail"} for e in m.lost]}


def unresolved(data: Mapping[str, Any]) -> int:
    """Captured payments still on their way: lost, but not stranded (those nothing moves)."""
    m = money(data)
    return len(m.lost) - len(m.stranded)


# --- serials: issued once, used once -----------------------------------------------------------------------


def duplicates(data: Mapping[str, Any]) -> dict[str, Any]:
    """Serials issued twice or used twice, each way it could show (the rush report's ``duplicates``:
    ``total``, ``parts``, ``reuse_attempts_refused``)."""
    issued = {r["sn"]: r["order_id"] for r in data["serials"] if r["order_id"] is not None}
    per_order = Counter(issued.values())
    over_issued = sum(1 for i in data["issuances"] if per_order.get(i["order_id"], 0) > i["quantity"])
    in_orders = Counter(sn for o in data["orders"] for sn in set(o["serials"] or ()))
    in_order_rows = Counter(r["sn"] for r in data["order_serials"])
    done = [j for j in data["stampings"] if j["status"] == "DONE"]
    done_by_sn = {j["sn"]: j["id"] for j in done}
    parts = {
        "minting_issued_beyond_quantity": over_issued,
        "order_serial_not_issued_to_that_order": sum(1 for r in data["order_serials"]
                                                     if issued.get(r["sn"]) != r["order_id"]),
        "serial_in_two_orders": sum(1 for n in in_orders.values() if n > 1)
        + sum(1 for n in in_order_rows.values() if n > 1),
        "quota_serial_not_issued_to_that_order": sum(1 for r in data["stamps"] if issued.get(r["sn"]) != r["order_id"]),
        "serial_in_two_done_stampings": sum(1 for n in Counter(j["sn"] for j in done).values() if n > 1),
        "registry_stamped_by_another_stamping": sum(
            1 for r in data["serials"] if r["status"] == "STAMPED" and r["sn"] in done_by_sn
            and done_by_sn[r["sn"]] != r["stamping_id"]),
        "refunded_and_stamped": len(refund_violations(data)["refunded_serial_stamped"]),
    }
    return {"total": sum(parts.values()), "parts": parts, "reuse_attempts_refused": len(data["reuse_attempts"])}


# --- the checks (chaos) ------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    kind: str = "invariant"
    """``invariant`` (fails the run) or ``observation`` (reported)."""
    violations: list[str] = field(default_factory=list)

    def status(self) -> str:
        return "ok" if self.ok else ("FAIL" if self.kind == "invariant" else "WARN")


def evaluate(data: Mapping[str, Any], acknowledged: set[str], quiescence: Mapping[str, Any]) -> list[Check]:
    """The invariants, from what ``snapshot`` read (``acknowledged``: the paymentRequestIds the bank
    was answered ``2002500`` for; ``quiescence``: ``{"reached", "after_s", "still_in_flight"}``)."""
    checks: list[Check] = []
    orders = {r["id"]: r for r in data["orders"]}
    order_serials: dict[str, list[str]] = {}
    for r in data["order_serials"]:
        order_serials.setdefault(r["order_id"], []).append(r["sn"])
    minted = {r["sn"]: r for r in data["serials"]}
    stamps = {r["sn"]: r for r in data["stamps"]}
    stampings = data["stampings"]

    checks.append(Check("quiescence after recovery", bool(quiescence.get("reached")),
                        f"after {quiescence.get('after_s')}s" if quiescence.get("reached")
                        else f"still in flight: {quiescence.get('still_in_flight')}"))

    # every captured payment ends credited (FULFILLED with its serials) or refunded (refund recorded)
    m = money(data)
    bad = [f"order {e['order_id']}: {e['detail']}" for e in m.lost]
    bad += [f"order {p['order_id']}: refund recorded but order is {o and o['status']}" for p in m.refunded
            if (o := orders.get(p["order_id"])) is None or o["status"] != "REFUNDED"]
    checks.append(Check("every captured payment credited or refunded", not bad,
                        f"{m.captured} captured: {m.credited} credited, {len(m.refunded)} refunded, "
                        f"{len(m.lost)} lost", violations=bad))

    # "pending" never hides parked work: a captured payment whose only pending step is a parked
    # message is lost (nothing moves it until an operator acts), and the check names the message
    checks.append(Check("no captured payment stranded behind a parked message (counted lost)", not m.stranded,
                        f"{len(m.stranded)} captured payment(s) whose only pending step is parked work",
                        violations=[f"order {o}: lost, {'; '.join(w.describe() for w in work)}"
                                    for o, work in m.stranded.items()]))

    # the bank's acknowledged payments exist (an acknowledged payment we did not record is lost money)
    captured_ids = {p["payment_request_id"] for p in data["payments"]}
    missing = sorted(acknowledged - captured_ids)
    checks.append(Check("every payment the bank got 2002500 for is captured", not missing,
                        f"{len(acknowledged)} acknowledged, {len(captured_ids)} captured",
                        violations=[f"paymentRequestId {x}" for x in missing]))
    per_order = Counter(p["order_id"] for p in data["payments"])
    twice = [f"order {o}: {n} captures" for o, n in per_order.items() if n > 1]
    checks.append(Check("one capture per order (duplicate callbacks absorbed)", not twice,
                        f"{len(per_order)} orders paid", violations=twice))

    # serials: issued once (minting), in one order (order db), used by one DONE stamping
    issued = [r for r in data["serials"] if r["order_id"] is not None]
    by_issuance: Counter[str] = Counter(r["order_id"] for r in issued)
    issued_to = {i["order_id"] for i in data["issuances"] if i["status"] == "ISSUED"}
    bad = [f"issuance {i['order_id']}: {by_issuance.get(i['order_id'], 0)} serials for quantity {i['quantity']}"
           for i in data["issuances"] if i["status"] == "ISSUED" and by_issuance.get(i["order_id"], 0) != i["quantity"]]
    bad += [f"serial {r['sn']} carries order {r['order_id']} without an ISSUED issuance" for r in issued
            if r["order_id"] not in issued_to]
    checks.append(Check("minting: every serial issued once, to one issuance", not bad,
                        f"{len(issued)} serials issued to {len(by_issuance)} orders", violations=bad))

    in_orders = Counter(sn for o in data["orders"] for sn in o["serials"])
    bad = [f"serial {sn} in {n} orders" for sn, n in in_orders.items() if n > 1]
    bad += [f"serial {sn}: order {oid} in order_serials, minting says {minted.get(sn, {}).get('order_id')}"
            for oid, sns in order_serials.items() for sn in sns if minted.get(sn, {}).get("order_id") != oid]
    checks.append(Check("order db: no serial in two orders, each the one minting issued it to", not bad,
                        f"{len(in_orders)} serials in {sum(1 for o in data['orders'] if o['serials'])} orders",
                        violations=bad))

    done = [j for j in stampings if j["status"] == "DONE"]
    per_sn = Counter(j["sn"] for j in done)
    bad = [f"serial {sn} used by {n} DONE stampings" for sn, n in per_sn.items() if n > 1]
    for j in done:
        s = minted.get(j["sn"])
        if s is None or s["status"] != "STAMPED" or s["stamping_id"] != j["id"] \
                or s["document_sha256"] != j["stamped_sha256"]:
            bad.append(f"stamping {j['id']} DONE with {j['sn']}, minting has "
                       f"{s and (s['status'], str(s['stamping_id']), s['document_sha256'] == j['stamped_sha256'])}")
    stamped_sns = {r["sn"] for r in data["serials"] if r["status"] == "STAMPED"}
    bad += [f"serial {sn} STAMPED in minting without a DONE stamping" for sn in sorted(stamped_sns - set(per_sn))]
    bad += [f"reuse attempt recorded: {r['sn']} by {r['stamping_id']} ({r['found_status']})"
            for r in data["reuse_attempts"]]
    checks.append(Check("no serial used by two DONE stampings; minting STAMPED = DONE (same document)", not bad,
                        f"{len(done)} DONE, {len(stamped_sns)} STAMPED in minting, "
                        f"{len(data['reuse_attempts'])} reuse attempts", violations=bad))

    # buyers' refunds of unused stamps: refunded serials VOID everywhere and never stamped; the
    # captured money = credited stamps + refunds (per-stamp price of the voided serials, paid out)
    broken = refund_violations(data)
    for name, title in (("refunded_serial_not_void_in_registry", "every refunded serial is VOID in the registry"),
                        ("refunded_serial_stamped", "no refunded serial was stamped"),
                        ("refunded_serial_in_quota", "no refunded serial is in the quota"),
                        ("refund_amount_mismatch", "captured money = credited stamps + refunds (per-stamp price "
                                                   "of the voided serials, the same at order and payment)"),
                        ("refunds_exceed_payment", "an order's refunds never exceed its captured payment")):
        checks.append(Check(title, not broken[name], f"{len(data.get('buyer_refunds', ()))} buyer refund(s)",
                            violations=broken[name]))

    # the rush's count of serials issued or used twice, each way it could show
    twice_counted = duplicates(data)
    checks.append(Check("no serial issued or used twice (the rush's duplicates)", not twice_counted["total"],
                        f"{twice_counted['total']} duplicate(s)",
                        violations=[f"{k}: {v}" for k, v in twice_counted["parts"].items() if v]))

    # every accepted stamping ends DONE, or FAILED with its serial back to UNUSED
    live = {j["sn"]: j for j in stampings if j["status"] != "FAILED"}
    bad = []
    for j in stampings:
        stamp = stamps.get(j["sn"])
        stamp_status = stamp["status"] if stamp else None
        if j["status"] in ("QUEUED", "STAMPING"):
            bad.append(f"stamping {j['id']} still {j['status']} (attempts {j['attempts']})")
        elif j["status"] == "DONE" and stamp_status != "USED":
            bad.append(f"stamping {j['id']} DONE but stamp {j['sn']} is {stamp_status}")
        elif j["status"] == "FAILED" and stamp_status != "UNUSED" and j["sn"] not in live:
            bad.append(f"stamping {j['id']} FAILED ({j['error']}) but stamp {j['sn']} is {stamp_status}")
    bad += [f"stamp {sn} RESERVED without a live job" for sn, st in stamps.items()
            if st["status"] == "RESERVED" and sn not in live]
    failed = [j for j in stampings if j["status"] == "FAILED"]
    checks.append(Check("every accepted stamping DONE, or FAILED with its serial UNUSED again", not bad,
                        f"{len(stampings)} accepted: {len(done)} DONE, {len(failed)} FAILED", violations=bad))

    # the stamping quota learnt every serial minting issued, for the right account
    accounts = {o["id"]: o["account_id"] for o in data["orders"]}
    bad = [f"serial {r['sn']} of order {r['order_id']} missing from stamping's stamps" for r in issued
           if r["sn"] not in stamps]
    bad += [f"stamp {sn} belongs to {st['account_id']}, its order to {accounts.get(st['order_id'])}"
            for sn, st in stamps.items() if accounts.get(st["order_id"]) != st["account_id"]]
    checks.append(Check("stamping quota = serials minting issued, per account", not bad,
                        f"{len(stamps)} stamps known to stamping", violations=bad))

    # parking: reported with reasons; a parked message without one is a violation
    parked = data["parked"]
    reasonless = [f"{p['queue']} {p['message_id']} ({p['type']})" for p in parked
                  if not p.get("reason") or p["reason"] == "unknown"]
    checks.append(Check("nothing parked without a reason", not reasonless,
                        f"{len(parked)} parked message(s)", violations=reasonless))
    checks.append(Check("parking queues empty", not parked, f"{len(parked)} parked message(s)", kind="observation",
                        violations=[f"{p['queue']}: {p['type']} {p['correlation_id']}: {p['reason']}"
                                    for p in parked]))

    outbox = data["outbox"]
    bad = [f"{svc}: {v['parked']} parked row(s)" for svc, v in outbox.items() if v["parked"]]
    checks.append(Check("outbox: no parked rows", not bad,
                        ", ".join(f"{svc} {v['parked']}" for svc, v in outbox.items()), violations=bad))
    bad = [f"{svc}: {v['backlog']} unpublished row(s)" for svc, v in outbox.items() if v["backlog"]]
    bad += [f"queue {q}: {n} message(s)" for q, n in sorted(data["queues"].items())
            if n and not q.endswith(".parking")]
    checks.append(Check("outboxes published and queues drained", not bad,
                        f"{len(data['queues'])} queues in the vhost", violations=bad))

    states = Counter(o["status"] for o in data["orders"])
    unbilled = [f"order {o['id']} {o['status']} never billed" for o in data["orders"] if o["billed_at"] is None]
    checks.append(Check("every order got its bill (order.placed handled)", not unbilled,
                        ", ".join(f"{k} {v}" for k, v in sorted(states.items())), kind="observation",
                        violations=unbilled))
    for c in checks:
        c.violations = c.violations[:20]
    return checks


def counts(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "orders": dict(Counter(o["status"] for o in data["orders"])),
        "payments_captured": len(data["payments"]), "refunds": len(data["refunds"]),
        "buyer_refunds": refunds(data),
        "serials_issued": sum(1 for r in data["serials"] if r["order_id"] is not None),
        "serials_stamped": sum(1 for r in data["serials"] if r["status"] == "STAMPED"),
        "stampings": dict(Counter(j["status"] for j in data["stampings"])),
        "stampings_attempts_max": max((j["attempts"] for j in data["stampings"]), default=0),
        "stamps": dict(Counter(s["status"] for s in data["stamps"])),
        "parked_messages": len(data["parked"]),
        "outbox": data["outbox"],
    }
