"""The platform's subscription table and the services' subscriptions agree (no servers needed).

Every process that declares topology declares the whole table (``emeterai_shared.messaging.
platform_queues``), so that a message type reaches every consumer's queue even before that
consumer's service ever started. A subscription missing from the table would be declared by its
own service only, and its copies published before that would be lost; a table entry nobody
consumes would pile messages up forever.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from emeterai_shared.messaging import Subscription
from emeterai_shared.messaging.platform_queues import PLATFORM_QUEUES, platform_queue
from emeterai_shared.runtime import ServiceDefinition
from emeterai_testkit.probe import SERVICE as PROBE
from minting_service.bootstrap import SERVICE as MINTING
from order_service.bootstrap import SERVICE as ORDER
from payment_service.bootstrap import SERVICE as PAYMENT
from stamping_service.bootstrap import SERVICE as STAMPING

SERVICES = (ORDER, PAYMENT, MINTING, STAMPING)


def subscriptions_of(defn: ServiceDefinition[Any]) -> list[Subscription]:
    """The module-level subscription table of ``defn``: readable without a running context."""
    return list(defn.subscriptions)


@pytest.mark.parametrize("defn", SERVICES, ids=lambda d: d.name)
def test_every_subscription_is_in_the_table_with_the_same_type_and_arguments(defn: ServiceDefinition[Any]) -> None:
    subs = subscriptions_of(defn)
    assert subs, f"{defn.name} has no subscriptions"
    for sub in subs:
        entry = platform_queue(sub.queue)
        assert entry is not None, f"{defn.name}: {sub.queue} is missing from PLATFORM_QUEUES"
        assert entry.routing_keys == (sub.message.TYPE,), (sub.queue, entry.routing_keys, sub.message.TYPE)
        assert sub.spec == entry, f"{sub.queue} would be declared differently by its consumer and the table"
        assert sub.queue.startswith(f"{defn.name}."), f"queue {sub.queue} is not named <consumer>.<handler>"
    # every service declares the same table (the default), whoever is first to start
    assert defn.platform_queues == PLATFORM_QUEUES


def test_every_table_entry_has_exactly_one_consumer() -> None:
    consumed = Counter(sub.queue for defn in SERVICES for sub in subscriptions_of(defn))
    listed = Counter(spec.name for spec in PLATFORM_QUEUES)
    assert all(n == 1 for n in listed.values()), f"listed twice: {[q for q, n in listed.items() if n > 1]}"
    assert all(n == 1 for n in consumed.values()), f"consumed twice: {[q for q, n in consumed.items() if n > 1]}"
    assert set(listed) == set(consumed), {"nobody consumes": sorted(set(listed) - set(consumed)),
                                          "not listed": sorted(set(consumed) - set(listed))}


def test_a_type_with_two_consumers_is_routed_to_both_queues_in_the_table() -> None:
    """The case that lost copies: minting's serials go to order and to stamping."""
    queues = {spec.name for spec in PLATFORM_QUEUES if "minting.serials_issued.v1" in spec.routing_keys}
    assert queues == {"order.on_serials_issued", "stamping.on_serials_issued"}


def test_the_probe_is_outside_the_platform() -> None:
    assert PROBE.platform_queues == ()
    assert all(platform_queue(sub.queue) is None for sub in subscriptions_of(PROBE))
