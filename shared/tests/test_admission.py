"""Admission control: the adaptive global limit (503 overloaded) and the in-flight cap (503 busy)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from emeterai_shared.admission import Admission, AdmissionSettings, Newcomers, Sample, SlotGate
from emeterai_shared.http import ApiError, create_app


async def _never(_conn: object) -> Sample:
    raise AssertionError("not sampled in these tests")


def admission(**settings: float) -> Admission:
    return Admission("test", _never, AdmissionSettings(**settings))  # type: ignore[arg-type]


def test_the_limit_follows_the_measured_drain_rate() -> None:
    gate = admission(target_wait_s=30, min_limit=50)
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    assert gate.limit == 50  # nothing drained yet: the floor
    gate.observe(Sample(backlog=10, drained=100, window_s=10))  # 10/s: the first rate is taken as it is
    assert gate.drain_per_s == pytest.approx(10)
    for _ in range(30):
        gate.observe(Sample(backlog=10, drained=100, window_s=10))
    assert gate.drain_per_s == pytest.approx(10, rel=1e-3)
    assert gate.limit in (299, 300)  # 10/s for 30 s (the average approaches 10 from below)
    for _ in range(30):
        gate.observe(Sample(backlog=10, drained=20, window_s=10))  # the back tier slowed to 2/s
    assert gate.limit == 60


def test_past_the_limit_new_work_gets_503_with_the_time_to_drain_the_excess() -> None:
    gate = admission(target_wait_s=10, min_limit=1)
    for _ in range(40):
        gate.observe(Sample(backlog=100, drained=50, window_s=10))  # 5/s → limit 50
    assert gate.limit == 50
    with pytest.raises(ApiError) as refused:
        gate.admit()
    error = refused.value
    assert (error.status, error.code) == (503, "overloaded")
    assert error.headers["Retry-After"] == str(error.extra["retry_after_s"]) == "11"  # (100 - 50 + 1) / 5/s
    assert error.extra["retry_at"]


def test_what_a_process_admits_between_samples_counts() -> None:
    gate = admission(target_wait_s=10, min_limit=3)
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    gate.admit()
    gate.admit()
    gate.admit()
    with pytest.raises(ApiError):
        gate.admit()
    gate.observe(Sample(backlog=1, drained=0, window_s=10))  # the workers took two meanwhile
    gate.admit()


async def test_requests_that_add_no_backlog_pass_the_gate_without_counting() -> None:
    """Sign-ins are shed with orders when the platform is behind, but never fill the order backlog."""
    gate = admission(target_wait_s=10, min_limit=2)
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    for _ in range(10):
        async with gate.slot(counts=False):
            pass
    gate.admit()
    gate.admit()
    with pytest.raises(ApiError) as refused:
        async with gate.slot(counts=False):
            pass
    assert refused.value.code == "overloaded"


def test_before_any_drain_is_measured_callers_come_back_soon_without_a_place_in_the_queue() -> None:
    gate = admission(target_wait_s=0.1, min_limit=5, max_retry_after_s=42, unknown_retry_after_s=3)
    gate.observe(Sample(backlog=9, drained=0, window_s=10))  # the back tier has finished nothing yet
    for _ in range(50):
        with pytest.raises(ApiError) as refused:
            gate.admit()
        assert refused.value.headers["Retry-After"] == "3"
    gate.observe(Sample(backlog=9, drained=10, window_s=1))  # now 10/s (the first rate is taken as it is)
    assert gate.retry_after() == 1  # (9 - 5 + 1) / 10/s: the 50 told "soon" did not queue ahead


def test_when_a_tier_that_drained_stops_the_wait_grows_to_the_longest_retry_after() -> None:
    gate = admission(target_wait_s=10, min_limit=5, max_retry_after_s=42)
    gate.observe(Sample(backlog=9, drained=10, window_s=10))
    for _ in range(60):
        gate.observe(Sample(backlog=9, drained=0, window_s=10))
    assert gate.retry_after() == 42


def test_a_tier_that_keeps_up_or_idles_keeps_its_drain_rate_and_a_burst_is_measured_at_once() -> None:
    """A tier that keeps up drains what arrives, not what it can: its rate never lowers the limit.
    The stamping rush: after the purchases (stamping idle, a few warm-up documents) every applicant
    uploads at once; averaging the burst's first rate with the idle spell's told uploads to come
    back after 60 s while the workers then drained the rest in 24 s and idled."""
    gate = admission(target_wait_s=30, min_limit=50)
    gate.observe(Sample(backlog=0, drained=20, window_s=10))  # warm-up: 2/s
    for _ in range(60):
        gate.observe(Sample(backlog=0, drained=0, window_s=10))  # idle: nothing waits, nothing drains
    assert gate.drain_per_s == pytest.approx(2)
    gate.observe(Sample(backlog=900, drained=100, window_s=1))  # the burst drains 100/s
    assert gate.drain_per_s == pytest.approx(100)
    assert gate.limit == 3000 and gate.retry_after() is None  # 900 waiting are 9 s of work: admitted
    for _ in range(10):
        gate.observe(Sample(backlog=3, drained=200, window_s=10))  # keeps up with 20/s arriving
    assert gate.drain_per_s == pytest.approx(100)
    for _ in range(40):
        gate.observe(Sample(backlog=500, drained=200, window_s=10))  # behind at 20/s: the estimate falls
    assert gate.drain_per_s == pytest.approx(20, rel=1e-3)


def test_the_rate_counts_only_the_part_of_the_window_in_which_work_was_finishing() -> None:
    assert Sample.measured(0, 80, 10.0, 2.0).window_s == 2.0  # 40/s since draining began 2 s ago
    assert Sample.measured(0, 80, 10.0, 25.0).window_s == 10.0
    assert Sample.measured(0, 1, 10.0, 0.0).window_s == 1.0  # one item: at most 1/s
    assert Sample.measured(0, 0, 10.0, None).window_s == 10.0


async def test_sampling_failures_keep_the_last_sample() -> None:
    calls = 0

    async def flaky(_conn: object) -> Sample:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("database down")
        return Sample(backlog=7, drained=0, window_s=10)

    class Pool:
        def acquire(self) -> Pool:
            return self

        async def __aenter__(self) -> object:
            return object()

        async def __aexit__(self, *_: object) -> None:
            return None

    gate = Admission("test", flaky, AdmissionSettings(sample_interval_s=0.01, min_limit=5))
    task = asyncio.create_task(gate.run(Pool()))  # type: ignore[arg-type]
    while calls < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    assert gate.backlog == 7 and gate.retry_after() is not None


async def test_past_max_in_flight_a_process_answers_busy_at_once_but_probes_still_answer() -> None:
    release = asyncio.Event()
    entered = 0

    async def slow(_request: web.Request) -> web.Response:
        nonlocal entered
        entered += 1
        await release.wait()
        return web.json_response({"ok": True})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = create_app("test", max_body_bytes=1024, max_in_flight=2)
    app.router.add_get("/slow", slow)
    app.router.add_get("/healthz", healthz)
    async with TestClient(TestServer(app)) as client:
        first = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
        while entered < 2:
            await asyncio.sleep(0.01)
        refused = await client.get("/slow")
        assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        assert (await refused.json())["error"]["code"] == "busy"
        assert (await client.get("/healthz")).status == 200
        release.set()
        assert [(await t).status for t in first] == [200, 200]
        assert (await client.get("/slow")).status == 200


def test_callers_told_to_come_back_are_spread_out_and_drain_at_the_measured_rate() -> None:
    now = [0.0]
    gate = Admission("test", _never, AdmissionSettings(target_wait_s=10, min_limit=1, max_retry_after_s=600),
                     clock=lambda: now[0])
    for _ in range(40):
        gate.observe(Sample(backlog=50, drained=50, window_s=10))  # 5/s → limit 50: full
    waits = []
    for _ in range(20):
        with pytest.raises(ApiError) as refused:
            gate.admit()
        waits.append(int(refused.value.headers["Retry-After"]))
    assert waits == sorted(waits) and waits[-1] >= waits[0] + 3  # later callers are told to wait longer
    now[0] += 4.0  # 4 s at 5/s drains the 20 waiting callers
    gate.observe(Sample(backlog=50, drained=50, window_s=10))
    with pytest.raises(ApiError) as refused:
        gate.admit()
    assert int(refused.value.headers["Retry-After"]) == waits[0]


async def test_past_max_in_flight_requests_wait_in_line_and_are_served_in_order() -> None:
    gate = admission(min_limit=100, max_in_flight=2, queue_wait_s=60)
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    release = asyncio.Event()
    served: list[int] = []

    async def request(n: int) -> None:
        async with gate.slot():
            served.append(n)
            await release.wait()

    tasks = [asyncio.create_task(request(n)) for n in range(10)]
    while gate.gate.queued < 8:
        await asyncio.sleep(0.01)
    assert gate.in_flight == 2 and served == [0, 1]  # a burst past the cap waits; nobody is refused
    release.set()
    await asyncio.gather(*tasks)
    assert served == list(range(10)) and gate.in_flight == 0 and gate.gate.queued == 0


async def test_a_request_that_cannot_get_a_slot_before_its_deadline_is_shed_as_busy() -> None:
    gate = admission(min_limit=100, max_in_flight=1, queue_wait_s=0.05)
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    async with gate.slot():  # held for longer than the wait allowed
        with pytest.raises(ApiError) as refused:
            async with gate.slot():
                pass
        assert (refused.value.status, refused.value.code, refused.value.headers["Retry-After"]) == (503, "busy", "1")
        assert gate.gate.queued == 0  # the refused request left the line
    assert gate.in_flight == 0
    async with gate.slot():
        assert gate.in_flight == 1


async def test_a_full_line_or_a_line_too_slow_for_the_deadline_refuses_at_once() -> None:
    gate = admission(min_limit=100, max_in_flight=1, queue_wait_s=60, max_queued=1)
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    async with gate.slot():
        waiting = asyncio.create_task(gate.gate.enter())
        while gate.gate.queued < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as full:  # the line holds one: refused without waiting
            await gate.gate.enter()
        assert full.value.code == "busy"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert gate.in_flight == 0 and gate.gate.queued == 0
    slow = SlotGate(1, max_wait_s=0.5, max_queued=100)
    slow.hold_s = 2.0  # each request holds its slot 2 s: the first in line would wait past 0.5 s
    await slow.enter()
    with pytest.raises(ApiError) as too_slow:
        await slow.enter()
    assert too_slow.value.code == "busy" and slow.queued == 0


async def test_a_slot_handed_to_a_request_that_went_away_passes_to_the_next_in_line() -> None:
    gate = SlotGate(1, max_wait_s=60, max_queued=10)
    await gate.enter()
    gone = asyncio.create_task(gate.enter())
    next_in_line = asyncio.create_task(gate.enter())
    while gate.queued < 2:
        await asyncio.sleep(0.01)
    gate.leave()  # handed to ``gone``...
    gone.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await gone
    await next_in_line
    assert gate.busy == 1 and gate.queued == 0
    gate.leave()
    assert gate.busy == 0


async def test_a_request_that_gives_up_after_a_slot_was_freed_leaves_the_line_cleanly() -> None:
    """Seen in a rush as 500s: the waiter's future is cancelled as soon as its task is (or its deadline
    passes), a slot freed before the task runs again skips it, and the task must then not fail
    looking for itself in the line."""
    gate = SlotGate(1, max_wait_s=60, max_queued=10)
    await gate.enter()
    gone = asyncio.create_task(gate.enter())
    while gate.queued < 1:
        await asyncio.sleep(0.01)
    gone.cancel()  # its future is cancelled now; the task runs later
    gate.leave()  # skips the cancelled waiter: the slot goes back to the pool
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert gate.busy == 0 and gate.queued == 0
    await gate.enter()
    assert gate.busy == 1


async def test_overload_is_checked_before_a_request_takes_or_waits_for_a_slot() -> None:
    gate = admission(target_wait_s=10, min_limit=1, max_in_flight=1)
    for _ in range(40):
        gate.observe(Sample(backlog=100, drained=50, window_s=10))
    with pytest.raises(ApiError) as refused:
        async with gate.slot():
            pass
    assert refused.value.code == "overloaded" and gate.in_flight == 0 and gate.gate.queued == 0


def test_busy_callers_are_told_to_come_back_spread_out_at_the_rate_the_gate_serves() -> None:
    now = [100.0]
    gate = SlotGate(4, max_wait_s=0.5, max_queued=0, clock=lambda: now[0], max_retry_after_s=30)
    gate.busy, gate.hold_s = 4, 0.5  # full, each request holds its slot 0.5 s: the gate serves 8/s
    assert gate.refuses() and gate.rate_per_s == 8
    waits = [int(gate.refusal().headers["Retry-After"]) for _ in range(40)]
    assert waits == [1] * 8 + [2] * 8 + [3] * 8 + [4] * 8 + [5] * 8  # the n-th refused: n / 8/s, rounded up
    now[0] += 2.0  # 2 s at 8/s: 16 of the 40 have had their turn
    assert int(gate.refusal().headers["Retry-After"]) == 4  # (40 - 16 + 1) / 8/s
    now[0] += 60.0  # all drained: back to the shortest wait
    error = gate.refusal()
    assert (error.status, error.code, error.headers["Retry-After"]) == (503, "busy", "1")
    assert error.extra["retry_after_s"] == 1 and error.extra["retry_at"]


def test_busy_returns_are_capped_and_the_line_empties_within_the_cap() -> None:
    now = [0.0]
    gate = SlotGate(1, max_wait_s=0.5, max_queued=0, clock=lambda: now[0], max_retry_after_s=30)
    gate.busy, gate.hold_s = 1, 1.0  # 1/s
    waits = [int(gate.refusal().headers["Retry-After"]) for _ in range(100)]
    assert waits[:3] == [1, 2, 3] and waits[-1] == 30 and max(waits) == 30
    now[0] += 30.0
    assert gate.refusal().headers["Retry-After"] == "1"  # the 70 told 30 s did not queue ahead past the cap


async def test_those_waiting_in_line_for_a_slot_come_before_the_refused() -> None:
    now = [0.0]
    gate = SlotGate(2, max_wait_s=10, max_queued=0, clock=lambda: now[0])
    gate.busy, gate.hold_s = 2, 1.0  # 2/s
    loop = asyncio.get_running_loop()
    gate._waiters.extend(loop.create_future() for _ in range(6))  # six in line: 3 s
    assert gate.refusal().headers["Retry-After"] == "4"  # (6 + 1) / 2/s, rounded up


async def test_before_any_slot_was_given_back_busy_callers_come_back_in_a_second_without_a_place() -> None:
    gate = admission(min_limit=100, max_in_flight=1, max_queued=1)
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    async with gate.slot():  # nothing measured yet: no rate
        waiting = asyncio.create_task(gate.gate.enter())
        while gate.gate.queued < 1:
            await asyncio.sleep(0.01)
        for _ in range(5):
            with pytest.raises(ApiError) as refused:
                gate.shed_early()
            assert (refused.value.code, refused.value.headers["Retry-After"]) == ("busy", "1")
        assert gate.gate.come_back.waiting == 0
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_shed_early_refuses_by_arithmetic_what_the_gate_would_refuse_at_once() -> None:
    gate = admission(min_limit=100, max_in_flight=1, queue_wait_s=60, max_queued=1)
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    gate.shed_early()  # a free slot
    async with gate.slot():
        gate.shed_early()  # one place free in line
        waiting = asyncio.create_task(gate.gate.enter())
        while gate.gate.queued < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as refused:
            gate.shed_early()  # the line is full
        assert refused.value.code == "busy"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    overloaded = admission(target_wait_s=10, min_limit=1, max_in_flight=1)
    for _ in range(40):
        overloaded.observe(Sample(backlog=100, drained=50, window_s=10))
    with pytest.raises(ApiError) as refused:
        overloaded.shed_early()
    assert refused.value.code == "overloaded"


async def test_a_route_s_early_shedding_runs_before_its_handler_reads_or_authenticates_anything() -> None:
    """The middleware runs a route's ``shed_early`` first: a shed request never reaches the handler
    (which would read the body and verify the token), and is counted as shed."""
    from emeterai_shared.http import Operation
    from emeterai_shared.runtime import DEPENDENCIES, Router
    from emeterai_shared.telemetry import SHED

    gate = admission(target_wait_s=10, min_limit=1, max_in_flight=1)
    reached = 0

    async def handler(request: web.Request, _deps: Admission) -> web.Response:
        nonlocal reached
        reached += 1
        await request.read()
        return web.json_response({"ok": True})

    app = create_app("early", max_body_bytes=1024)
    app[DEPENDENCIES] = gate
    router: Router[Admission] = Router(app, None)
    router.add(Operation("POST", "/front", "a front door"), handler,
               shed_early=lambda deps, _request: deps.shed_early())
    router.add(Operation("POST", "/other", "not a front door"), handler)
    shed_before = SHED.labels("early", "/front", "503")._value.get()
    async with TestClient(TestServer(app)) as client:
        gate.observe(Sample(backlog=0, drained=0, window_s=10))
        assert (await client.post("/front", data=b"{}")).status == 200 and reached == 1
        for _ in range(40):
            gate.observe(Sample(backlog=100, drained=50, window_s=10))
        refused = await client.post("/front", data=b"x" * 1000, headers={"Authorization": "Bearer not-a-token"})
        assert refused.status == 503 and refused.headers["Retry-After"] == "11"
        body = await refused.json()
        assert body["error"]["code"] == "overloaded" and body["error"]["retry_after_s"] == 11
        assert reached == 1  # the handler never ran
        assert SHED.labels("early", "/front", "503")._value.get() == shed_before + 1
        assert (await client.post("/other", data=b"{}")).status == 200 and reached == 2


async def test_past_http_max_in_flight_the_refused_come_back_at_the_rate_the_process_answers() -> None:
    from emeterai_shared.http import make_middlewares

    now = [0.0]
    release = asyncio.Event()
    entered = 0

    async def slow(_request: web.Request) -> web.Response:
        nonlocal entered
        entered += 1
        now[0] += 1.0  # each request is in flight 1 s (on the injected clock)
        if entered > 2:
            await release.wait()
        return web.json_response({"ok": True})

    app = web.Application(middlewares=make_middlewares("test", 2, busy_max_retry_after_s=30, clock=lambda: now[0]))
    app.router.add_get("/slow", slow)
    async with TestClient(TestServer(app)) as client:
        for _ in range(2):
            assert (await client.get("/slow")).status == 200  # measured: 1 s in flight, 2 at once: 2/s
        held = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
        while entered < 4:
            await asyncio.sleep(0.01)
        waits = []
        for _ in range(6):
            refused = await client.get("/slow")
            assert refused.status == 503 and (await refused.json())["error"]["code"] == "busy"
            waits.append(int(refused.headers["Retry-After"]))
        assert waits == [1, 1, 2, 2, 3, 3]  # the n-th refused: n / 2/s, rounded up
        now[0] += 2.0  # 2 s at 2/s: four have had their turn
        assert (await client.get("/slow")).headers["Retry-After"] == "2"  # (6 - 4 + 1) / 2/s
        release.set()
        assert [(await t).status for t in held] == [200, 200]


# --- newcomers paced to the progress of those already in ------------------------------------------


def paced(now: list[float], **settings: float) -> Admission:
    return Admission("test", _never, AdmissionSettings(**settings), clock=lambda: now[0])  # type: ignore[arg-type]


def newcomers_admitted(gate: Admission, tries: int) -> tuple[int, list[ApiError]]:
    admitted, refused = 0, []
    for _ in range(tries):
        try:
            gate.shed_newcomer_early()
            admitted += 1
        except ApiError as exc:
            refused.append(exc)
    return admitted, refused


def test_with_a_free_slot_newcomers_are_never_paced() -> None:
    now = [0.0]
    gate = paced(now, min_limit=10_000, max_in_flight=4, newcomer_ratio=1.0, newcomer_floor_per_s=1, newcomer_burst=8)
    gate.gate.busy = 3  # one slot free
    assert newcomers_admitted(gate, 500) == (500, [])  # an idle platform's burst is served whole


def test_while_every_slot_is_taken_newcomers_pass_at_the_pace_of_the_orders_placed() -> None:
    now = [0.0]
    gate = paced(now, min_limit=10_000, max_in_flight=4, newcomer_ratio=1.25, newcomer_floor_per_s=2,
                 newcomer_burst=10)
    gate.gate.busy, gate.gate.hold_s = 4, 0.1  # every slot taken
    admitted, refused = newcomers_admitted(gate, 30)
    assert admitted == 10 and len(refused) == 20  # the burst, then nothing until the bucket refills
    assert {(e.status, e.code) for e in refused} == {(503, "busy")}
    now[0] += 1.0  # a second without an order: the floor, 2/s
    assert newcomers_admitted(gate, 10)[0] == 2
    for _ in range(5):  # orders placed at 40/s for 5 s: the pace rises to 1.25 x 40/s
        for _ in range(40):
            gate.progressed()
        now[0] += 1.0
        newcomers_admitted(gate, 1_000)
    assert gate.newcomers.progress_per_s == pytest.approx(40)
    now[0] += 0.2  # 0.2 s at 50/s
    assert newcomers_admitted(gate, 100)[0] == 10
    gate.gate.busy = 3  # a slot is free again: nobody is paced
    assert newcomers_admitted(gate, 100)[0] == 100


def test_refused_newcomers_come_back_spread_out_at_the_pace() -> None:
    now = [0.0]
    gate = paced(now, min_limit=10_000, max_in_flight=1, newcomer_ratio=1.0, newcomer_floor_per_s=4,
                 newcomer_burst=1, busy_max_retry_after_s=30)
    gate.gate.busy, gate.gate.hold_s = 1, 0.001  # the slot is taken; the gate itself would still serve fast
    admitted, refused = newcomers_admitted(gate, 13)
    assert admitted == 1
    assert [int(e.headers["Retry-After"]) for e in refused] == [1] * 4 + [2] * 4 + [3] * 4  # at 4/s


def test_newcomer_pacing_can_be_turned_off_and_orders_are_never_paced() -> None:
    now = [0.0]
    off = paced(now, min_limit=10_000, max_in_flight=1, newcomer_ratio=0, newcomer_burst=1)
    off.gate.busy = 1
    assert newcomers_admitted(off, 50) == (50, [])
    on = paced(now, min_limit=10_000, max_in_flight=1, newcomer_ratio=1, newcomer_floor_per_s=1, newcomer_burst=1)
    on.gate.busy, on.gate.hold_s = 1, 0.001
    newcomers_admitted(on, 5)
    on.shed_early()  # an order (a request of someone already in) is not paced by the newcomers' bucket


def test_newcomers_measure_progress_in_windows_and_smooth_it() -> None:
    now = [0.0]
    pace = Newcomers(ratio=2.0, floor_per_s=1.0, burst=5, clock=lambda: now[0])
    assert pace.pace_per_s == 1.0  # nothing measured: the floor
    for _ in range(30):
        pace.progressed()
    now[0] += 1.0
    pace.admit(pressed=False)
    assert pace.progress_per_s == pytest.approx(30) and pace.pace_per_s == pytest.approx(60)  # the first as it is
    now[0] += 1.0
    pace.admit(pressed=False)  # a second without progress lowers it by the smoothing weight only
    assert 0 < pace.progress_per_s < 30


def test_by_default_a_burst_the_gate_can_hold_is_never_paced_and_the_pace_is_exported() -> None:
    from emeterai_shared.telemetry import ADMISSION_NEWCOMER_PACE

    now = [0.0]
    gate = Admission("pace-test", _never, AdmissionSettings(min_limit=10_000, max_in_flight=4, newcomer_ratio=1.0,
                                                            newcomer_floor_per_s=3), clock=lambda: now[0])
    assert gate.newcomers.burst == 4 + 16  # the slots and the line (4 x the slots)
    gate.gate.busy, gate.gate.hold_s = 4, 0.1
    assert newcomers_admitted(gate, 25)[0] == 20
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    assert ADMISSION_NEWCOMER_PACE.labels("pace-test")._value.get() == 3.0  # no orders yet: the floor


def _ticket(refusal: ApiError) -> str:
    from http.cookies import SimpleCookie

    from emeterai_shared.admission import QUEUE_COOKIE

    cookie: SimpleCookie = SimpleCookie(refusal.headers["Set-Cookie"])
    morsel = cookie[QUEUE_COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/v1"
    assert int(morsel["max-age"]) == int(refusal.headers["Retry-After"]) + 30
    return morsel.value


def test_a_refused_newcomer_who_comes_back_when_told_goes_before_fresh_arrivals() -> None:
    """The newcomers' line is honest: a refused newcomer gets its place (a ticket in a cookie), and
    coming back with it when told is let in ahead of those arriving fresh, once."""
    from emeterai_shared.telemetry import ADMISSION_NEWCOMER_TICKETS

    now = [0.0]
    gate = Admission("ticket-test", _never, AdmissionSettings(
        min_limit=10_000, max_in_flight=1, newcomer_ratio=1.0, newcomer_floor_per_s=2, newcomer_burst=1,
        busy_max_retry_after_s=30), clock=lambda: now[0])
    gate.gate.busy, gate.gate.hold_s = 1, 0.001  # the slot is taken: newcomers are paced at 2/s
    admitted, refused = newcomers_admitted(gate, 5)
    assert admitted == 1 and len(refused) == 4
    tickets = [_ticket(e) for e in refused]
    assert len(set(tickets)) == 4
    assert [int(e.headers["Retry-After"]) for e in refused] == [1, 1, 2, 2]
    gate.observe(Sample(backlog=0, drained=0, window_s=10))
    assert ADMISSION_NEWCOMER_TICKETS.labels("ticket-test")._value.get() == 4
    # half a second early by its clock is on time; a forged ticket counts as fresh and is refused, and
    # one shown more than a second early is refused but kept for its time
    now[0] += 0.5
    gate.shed_newcomer_early(tickets[0])
    with pytest.raises(ApiError):
        gate.shed_newcomer_early("not-a-ticket")
    with pytest.raises(ApiError):
        gate.shed_newcomer_early(tickets[2])
    # a second later the token goes to the one told to come back, not to a fresh arrival
    now[0] += 1.0
    gate.shed_newcomer_early(tickets[1])
    with pytest.raises(ApiError) as fresh:
        gate.shed_newcomer_early()
    assert int(fresh.value.headers["Retry-After"]) >= 2  # behind the line
    with pytest.raises(ApiError):
        gate.shed_newcomer_early(tickets[1])  # a ticket is used once
    # those told to come back are let in even past the tokens (one refills in 0.5 s at 2/s: two come)
    now[0] += 0.5
    gate.shed_newcomer_early(tickets[2])
    gate.shed_newcomer_early(tickets[3])
    with pytest.raises(ApiError):
        gate.shed_newcomer_early()  # the debt is the fresh arrivals' to wait out
    assert gate.newcomers.tickets == 5  # the places of the five refused since the first four
    # unused places are forgotten once their grace has passed
    now[0] += 60.0
    assert gate.newcomers.tickets == 0
    gate.shed_newcomer_early()  # the bucket refilled meanwhile: its one token
    with pytest.raises(ApiError):
        gate.shed_newcomer_early(_ticket(fresh.value))  # expired: no better than none


def test_with_a_free_slot_a_ticket_is_not_needed_and_https_tickets_are_secure() -> None:
    now = [0.0]
    gate = paced(now, min_limit=10_000, max_in_flight=1, newcomer_ratio=1.0, newcomer_floor_per_s=1, newcomer_burst=1)
    gate.gate.busy, gate.gate.hold_s = 1, 0.001
    gate.shed_newcomer_early()
    with pytest.raises(ApiError) as refused:
        gate.shed_newcomer_early(secure=True)
    assert "Secure" in refused.value.headers["Set-Cookie"]
    gate.gate.busy = 0  # a free slot: everybody passes, with a ticket or without
    gate.shed_newcomer_early()
    gate.shed_newcomer_early("whatever")


def test_the_places_kept_are_bounded_whatever_the_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    from emeterai_shared import admission as admission_module

    monkeypatch.setattr(admission_module, "MAX_TICKETS", 3)
    now = [0.0]
    gate = paced(now, min_limit=10_000, max_in_flight=1, newcomer_ratio=1.0, newcomer_floor_per_s=1, newcomer_burst=1)
    gate.gate.busy, gate.gate.hold_s = 1, 0.001
    _, refused = newcomers_admitted(gate, 6)
    places = [e for e in refused if "Set-Cookie" in e.headers]
    assert len(refused) == 5 and len(places) == 3  # refused all the same; places for the first three only
    now[0] += 2.0
    gate.shed_newcomer_early(_ticket(places[0]))  # a place used still counts until its grace has passed
    with pytest.raises(ApiError) as refused_again:
        gate.shed_newcomer_early()
    assert "Set-Cookie" not in refused_again.value.headers
    now[0] += 60.0  # past every grace: places are given again
    with pytest.raises(ApiError) as later:
        gate.shed_newcomer_early()
        gate.shed_newcomer_early()
    assert "Set-Cookie" in later.value.headers


async def test_the_time_a_request_waits_parked_is_left_out_of_its_latency_and_of_the_in_flight_count() -> None:
    """A long poll's wait is the client's choice, not the server's time: ``emeterai_http_request_seconds``
    records the time before and after it (on the injected clock), and meanwhile the request does
    not count against ``max_in_flight``."""
    from emeterai_shared.http import make_middlewares, parked
    from prometheus_client import REGISTRY

    now = [0.0]
    waiting = asyncio.Event()
    go = asyncio.Event()

    async def long_poll(request: web.Request) -> web.Response:
        now[0] += 0.25  # work before the wait
        with parked(request):
            waiting.set()
            await go.wait()
            now[0] += 100.0  # the wait
        now[0] += 0.5  # work after it
        return web.json_response({"ok": True})

    app = web.Application(middlewares=make_middlewares("parking-test", 1, clock=lambda: now[0]))
    app.router.add_get("/poll", long_poll)
    labels = {"service": "parking-test", "route": "/poll", "method": "GET"}
    async with TestClient(TestServer(app)) as client:
        held = asyncio.create_task(client.get("/poll"))
        await waiting.wait()
        assert REGISTRY.get_sample_value("emeterai_http_in_flight", {"service": "parking-test"}) == 0
        go.set()
        assert (await held).status == 200
    assert REGISTRY.get_sample_value("emeterai_http_request_seconds_count", labels) == 1
    assert REGISTRY.get_sample_value("emeterai_http_request_seconds_sum", labels) == pytest.approx(0.75)
