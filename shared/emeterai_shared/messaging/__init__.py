"""RabbitMQ messaging: topology, connections, publisher, consumer runtime, parking tools."""

from emeterai_shared.messaging.connection import connect
from emeterai_shared.messaging.consumer import (
    Consumer,
    Envelope,
    Handler,
    NotYet,
    PermanentError,
    Subscription,
)
from emeterai_shared.messaging.publisher import BrokerUnavailable, Publisher, PublishError
from emeterai_shared.messaging.topology import EVENTS, PARKING, RETRY, QueueSpec

__all__ = [
    "EVENTS", "PARKING", "RETRY", "BrokerUnavailable", "Consumer", "Envelope", "Handler",
    "NotYet", "PermanentError", "PublishError", "Publisher", "QueueSpec", "Subscription", "connect",
]
