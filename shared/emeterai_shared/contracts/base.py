"""Versioned integration messages and the registry from type name to model.

A message type is its routing key, ``<producer>.<event>.v<major>`` in the past tense. Producers
build messages from a strict model (unknown or wrongly typed fields are refused); consumers
decode with a tolerant twin of the same model that ignores fields added by newer producers.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9]*\.[a-z][a-z0-9_]*\.v[0-9]+$")


class DuplicateMessageType(RuntimeError):
    """Two models claim the same type name."""


class UnknownMessageType(LookupError):
    pass


class MessageDecodeError(ValueError):
    """A body that is not valid for its declared type: it will never succeed, so it parks."""


class Message(BaseModel):
    """Base of every integration message body."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    TYPE: ClassVar[str]
    _tolerant: ClassVar[type[Message]]

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


M = TypeVar("M", bound=type[Message])

_registry: dict[str, type[Message]] = {}


def message(type_name: str) -> Any:
    """Class decorator registering a message model under its type name."""

    def register(cls: M) -> M:
        if not TYPE_PATTERN.match(type_name):
            raise ValueError(f"message type {type_name!r} must look like producer.event.v1")
        if type_name in _registry:
            raise DuplicateMessageType(
                f"{type_name} is already registered by {_registry[type_name].__qualname__}"
            )
        cls.TYPE = type_name
        tolerant_config = ConfigDict(**{**cls.model_config, "extra": "ignore", "strict": False})
        cls._tolerant = type(f"{cls.__name__}Tolerant", (cls,), {"model_config": tolerant_config})
        _registry[type_name] = cls
        return cls

    return register


def registry() -> dict[str, type[Message]]:
    return dict(_registry)


def model_for(type_name: str) -> type[Message]:
    try:
        return _registry[type_name]
    except KeyError:
        raise UnknownMessageType(type_name) from None


def decode(type_name: str | None, body: bytes) -> Message:
    """Decode a body for its declared type, tolerating extra fields."""
    if not type_name:
        raise MessageDecodeError("message has no type")
    try:
        cls = model_for(type_name)
    except UnknownMessageType:
        raise MessageDecodeError(f"unknown message type {type_name!r}") from None
    try:
        return cls._tolerant.model_validate_json(body)
    except ValidationError as exc:
        raise MessageDecodeError(f"invalid {type_name}: {exc.error_count()} error(s): {exc}") from None
