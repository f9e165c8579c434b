"""The acquirers' circuit breaker (``payment_service.adapters.breaker``) on a clock the test moves, and
an acquirer client failing at once while its breaker is open."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from emeterai_testkit.fixtures import free_port
from payment_service.adapters.acquirers import Acquirer, AcquirerCircuitOpen, AcquirerClient, AcquirerUnavailable
from payment_service.adapters.acquirersim import new_acquirer_entry
from payment_service.adapters.breaker import BreakerState, CircuitBreaker, CircuitOpen
from payment_service.adapters.snap import QR_QUERY
from payment_service.metrics import ACQUIRER_CALLS


class Down(Exception):
    """A failure the breaker counts (as AcquirerUnavailable is for the acquirers)."""


class Refused(Exception):
    """An answer that is not a success (as AcquirerRefused): the other side is there."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[BreakerState] | None = None) -> CircuitBreaker:
    return CircuitBreaker("acq", threshold=3, cool_down_s=10.0, failure=(Down,), clock=clock,
                          on_change=(lambda b: changes.append(b.state)) if changes is not None else None)


def fail(b: CircuitBreaker) -> None:
    with pytest.raises(Down), b.call():
        raise Down


def succeed(b: CircuitBreaker) -> None:
    with b.call():
        pass


def test_a_run_of_failures_opens_it_and_a_success_between_resets_the_run() -> None:
    clock, changes = Clock(), list[BreakerState]()
    b = breaker(clock, changes)
    fail(b)
    fail(b)
    succeed(b)  # the run is broken
    fail(b)
    fail(b)
    assert b.state is BreakerState.CLOSED and changes == []
    fail(b)
    assert b.state is BreakerState.OPEN and changes == [BreakerState.OPEN]
    assert b.retry_in() == 10.0


def test_while_open_calls_fail_at_once_without_running() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    ran = False
    clock.now += 9.5
    with pytest.raises(CircuitOpen) as refused, b.call():
        ran = True
    assert not ran and refused.value.retry_in_s == pytest.approx(0.5)


def test_after_the_cool_down_one_probe_decides_closed() -> None:
    clock, changes = Clock(), list[BreakerState]()
    b = breaker(clock, changes)
    for _ in range(3):
        fail(b)
    clock.now += 10.1
    with b.call():  # the probe
        assert b.state is BreakerState.HALF_OPEN
        with pytest.raises(CircuitOpen), b.call():  # any other call meanwhile fails at once
            pass
    assert b.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    fail(b)
    fail(b)
    assert b.state is BreakerState.CLOSED  # a new run starts from zero


def test_a_failed_probe_opens_it_for_another_cool_down() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    clock.now += 11
    fail(b)
    assert b.state is BreakerState.OPEN and b.opened_at == clock.now and b.retry_in() == 10.0


def test_a_refusal_is_an_answer_and_closes_it() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    clock.now += 11
    with pytest.raises(Refused), b.call():
        raise Refused
    assert b.state is BreakerState.CLOSED


def test_a_cancelled_probe_gives_no_verdict_and_the_next_call_probes() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    clock.now += 11
    with pytest.raises(asyncio.CancelledError), b.call():
        raise asyncio.CancelledError
    assert b.state is BreakerState.HALF_OPEN
    succeed(b)
    assert b.state is BreakerState.CLOSED


def test_calls_admitted_before_a_change_do_not_count_after_it() -> None:
    """Calls in flight when the breaker opens (a round of concurrent calls) change nothing once it
    has: neither their failures nor a late success close or reopen it."""
    clock = Clock()
    b = breaker(clock)
    late_failure, late_success = b.call(), b.call()
    late_failure.__enter__()
    late_success.__enter__()
    for _ in range(3):
        fail(b)
    opened_at = b.opened_at
    clock.now += 1
    assert late_failure.__exit__(Down, Down(), None) is False  # the failure goes on to its caller
    late_success.__exit__(None, None, None)
    assert b.state is BreakerState.OPEN and b.opened_at == opened_at


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("acq", threshold=0, cool_down_s=1, failure=(Down,))


async def test_an_acquirer_client_fails_at_once_while_its_breaker_is_open() -> None:
    """Against a port nobody listens on: the first call is refused by the network (after its
    retries), then the open breaker answers without a request."""
    entry, _ = new_acquirer_entry(f"http://127.0.0.1:{free_port()}/snap", acquirer_id="unit-dead")
    acquirer = Acquirer.of(entry)
    b = CircuitBreaker("unit-dead", threshold=1, cool_down_s=60, failure=(AcquirerUnavailable,),
                       refusal=AcquirerCircuitOpen)
    unreachable = ACQUIRER_CALLS.labels("unit-dead", "/v1.0/access-token/b2b", "unreachable")
    shed = ACQUIRER_CALLS.labels("unit-dead", QR_QUERY, "breaker_open")
    async with aiohttp.ClientSession() as session:
        client = AcquirerClient(acquirer, session, timeout_s=1, attempts=2, backoff_s=0.01, breaker=b)
        with pytest.raises(AcquirerUnavailable) as first:
            await client.call(QR_QUERY, {})
        assert not isinstance(first.value, AcquirerCircuitOpen) and b.state is BreakerState.OPEN
        tried, refused = unreachable._value.get(), shed._value.get()
        with pytest.raises(AcquirerCircuitOpen):
            await client.call(QR_QUERY, {})
        assert unreachable._value.get() == tried and shed._value.get() == refused + 1
