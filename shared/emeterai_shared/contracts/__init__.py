"""Integration messages: the published language between services."""

from emeterai_shared.contracts import events
from emeterai_shared.contracts.base import (
    DuplicateMessageType,
    Message,
    MessageDecodeError,
    UnknownMessageType,
    decode,
    message,
    model_for,
    registry,
)

__all__ = [
    "DuplicateMessageType",
    "Message",
    "MessageDecodeError",
    "UnknownMessageType",
    "decode",
    "events",
    "message",
    "model_for",
    "registry",
]
