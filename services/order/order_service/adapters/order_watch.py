"""Long polls of the order view: ``GET /v1/orders/{order_id}`` with ``If-None-Match`` and
``wait_s`` waits here until the order's view may have changed, instead of the buyer asking again
and again while the bill and the credit are on their way.

One api process keeps its waiting requests by order, each with the account asking and the tag of
the view it holds (its ``If-None-Match``, ``OrderRepository.view_tag``), and every ``interval_s``
sends every order, account and tag waited on to PostgreSQL in one statement, which answers those
no longer current (``OrderRepository.stale``): a request whose order's view changed (or that is
not the account's order) is woken and reads the view, whatever the number of requests waiting. A
request starts waiting without reading the view: the first look tells whether the tag it holds is
still current. A waiting request holds no database connection, no admission slot and no place in the
process's in-flight count (``http.parked``); at most ``capacity`` wait at once, past which
requests are answered at once as without ``wait_s``. A request whose client has gone (its
connection closed: the phone left the page, or the proxy gave up) stops waiting within a second,
so it neither keeps its place nor adds its order to the statement until ``wait_s`` ends."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from emeterai_shared.db import DATABASE_OUTAGE

from order_service.adapters.repository import OrderRepository
from order_service.metrics import ORDER_WATCH_WAKEUPS, ORDER_WATCHES

log = logging.getLogger(__name__)

MAX_WAIT_S = 30
"""The longest ``wait_s`` a request may ask for (below common proxies' idle timeouts of 60 s)."""
LET_GO_EVERY_S = 1.0
"""How often a look also asks every waiting request whether its client has gone (a cost per request
waiting, as the statement is: once a second, not at every look)."""


@dataclass(eq=False)
class _Waiter:
    account_id: uuid.UUID
    tag: str
    gone: Callable[[], bool] | None
    """Whether the request's client has gone (None: never asked)."""
    future: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    """True: the view changed; False: stop waiting (the client has gone, or the watch closed)."""

    def end(self, changed: bool) -> bool:
        if self.future.done():  # cancelled: its request not yet resumed
            return False
        self.future.set_result(changed)
        return True


def _holding(account_id: uuid.UUID, tag: str) -> Callable[[_Waiter], bool]:
    return lambda waiter: (waiter.account_id, waiter.tag) == (account_id, tag)


class OrderWatch:
    def __init__(self, interval_s: float, capacity: int) -> None:
        self.interval_s = interval_s
        self.capacity = capacity
        self._waiting: dict[uuid.UUID, list[_Waiter]] = {}
        self._count = 0
        self._closed = False
        self._let_go_at = 0.0

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        return self._count

    def has_room(self) -> bool:
        return self._count < self.capacity and self.interval_s > 0 and not self._closed

    def close(self) -> None:
        """The process is stopping: every waiting request is woken now (and, its view unchanged,
        answers ``304`` at once rather than being cut off when the server stops), none waits again."""
        self._closed = True
        for waiters in self._waiting.values():
            for waiter in waiters:
                if waiter.end(False):
                    ORDER_WATCH_WAKEUPS.labels("closed").inc()
        self._waiting.clear()
        self._count = 0
        ORDER_WATCHES.set(0)

    async def changed(self, order_id: uuid.UUID, account_id: uuid.UUID, tag: str, timeout_s: float,
                      gone: Callable[[], bool] | None = None) -> bool:
        """True once the tag of the order's view is no longer ``tag`` (or the order is gone, or is
        not ``account_id``'s); False when ``timeout_s`` passes first, when ``gone()`` says the
        request's client has gone (asked once a second), or when the watch closes or is closed."""
        if self._closed:
            return False
        entry = _Waiter(account_id, tag, gone)
        self._waiting.setdefault(order_id, []).append(entry)
        self._count += 1
        ORDER_WATCHES.set(self._count)
        try:
            async with asyncio.timeout(timeout_s):
                changed = await entry.future
            if changed:
                ORDER_WATCH_WAKEUPS.labels("changed").inc()
            return changed
        except TimeoutError:
            ORDER_WATCH_WAKEUPS.labels("timeout").inc()
            return False
        finally:
            self._forget(order_id, entry)  # still there unless ``wake`` or a look took it out

    def _forget(self, order_id: uuid.UUID, entry: _Waiter) -> None:
        waiters = self._waiting.get(order_id)
        if waiters is None or entry not in waiters:
            return
        waiters.remove(entry)
        if not waiters:
            del self._waiting[order_id]
        self._count -= 1
        ORDER_WATCHES.set(self._count)

    def wake(self, stale: list[tuple[uuid.UUID, uuid.UUID, str]]) -> int:
        """Wake the requests of an account waiting on an order with a tag of its view that is
        ``stale`` (the order changed since, or is gone, or is not that account's); returns how many
        were woken."""
        woken = 0
        for order_id, account_id, tag in stale:
            woken += self._end_where(order_id, _holding(account_id, tag), changed=True)
        ORDER_WATCHES.set(self._count)
        return woken

    def let_go(self) -> int:
        """End the waits of requests whose client has gone; returns how many."""
        ended = sum(self._end_where(order_id, lambda w: w.gone is not None and w.gone(), changed=False)
                    for order_id in list(self._waiting))
        if ended:
            ORDER_WATCH_WAKEUPS.labels("gone").inc(ended)
            ORDER_WATCHES.set(self._count)
        return ended

    def _end_where(self, order_id: uuid.UUID, ends: Callable[[_Waiter], bool], *, changed: bool) -> int:
        """End the waits on ``order_id`` for which ``ends`` holds, telling them ``changed``, and
        forget them; returns how many were ended (a cancelled one, its request not yet resumed, is
        forgotten without being told)."""
        waiters = self._waiting.get(order_id)
        if waiters is None:
            return 0  # ended by an earlier call, or gone meanwhile
        keep: list[_Waiter] = []
        ending: list[_Waiter] = []
        for waiter in waiters:
            (ending if ends(waiter) else keep).append(waiter)
        if not ending:
            return 0
        if keep:
            self._waiting[order_id] = keep
        else:
            del self._waiting[order_id]
        self._count -= len(ending)
        return sum(1 for waiter in ending if waiter.end(changed))

    async def tick(self, pool: asyncpg.Pool) -> int:
        """One look at every order waited on (none: no statement): the requests whose client has
        gone stop waiting (asked once a second), and the tags the others hold go to PostgreSQL,
        which answers those that are stale."""
        if (now := time.monotonic()) - self._let_go_at >= LET_GO_EVERY_S:
            self._let_go_at = now
            self.let_go()
        if not self._waiting:
            return 0
        seen = list({(order_id, w.account_id, w.tag) for order_id, waiters in self._waiting.items() for w in waiters})
        async with pool.acquire() as conn:
            stale = await OrderRepository(conn).stale(seen)
        return self.wake(stale)

    async def run(self, pool: asyncpg.Pool) -> None:
        """``tick`` every ``interval_s`` until cancelled; a database outage is waited out (the
        requests then end at their deadline, as without a change)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick(pool)
            except DATABASE_OUTAGE as exc:
                log.warning("order watch: database unavailable: %r", exc)
            except Exception:
                log.exception("order watch: the look at the orders waited on failed")
