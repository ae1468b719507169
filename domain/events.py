"""The event vocabulary: a base Struct, recorded envelopes, and a registry with upcasters.

Every event type is a msgspec Struct registered by its class name and carries a schema version.
Stored events are never rewritten: an old schema version is upcast on read, one version at a
time, by pure functions registered here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import msgspec

from spool.domain.errors import UnknownEventType


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every domain event; `schema_version` is the version this code writes."""

    schema_version: ClassVar[int] = 1


class Metadata(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who and what caused an event; the store adds the recorded time.

    `correlation_id` is the id of the API request that started the chain (its `x-request-id`);
    every event that follows from it, in any process, carries it on. `causation_id` is the id
    of the one thing that caused this event: the request id for the request's own events,
    otherwise the causing event's `event_id` (its global position).
    """

    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None
    request_id: str | None = None
    node_id: str | None = None

    def following(self, cause: Metadata) -> Metadata:
        """This actor's metadata for work that `cause` called for: its correlation and cause."""
        return msgspec.structs.replace(
            self, correlation_id=cause.correlation_id, causation_id=cause.causation_id
        )


NO_CAUSE = Metadata()
"""For work that follows from no recorded request (older queue entries, tests)."""


def event_id(position: int) -> str:
    """An event's id in causation chains: its global position, unique and never reused."""
    return str(position)


class NewEvent(msgspec.Struct, frozen=True):
    """An event on its way into the store."""

    event: Event
    metadata: Metadata = Metadata()


class RecordedEvent(msgspec.Struct, frozen=True):
    """An event as the store holds it, decoded to the current schema version."""

    position: int
    tx: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: Event
    metadata: Metadata
    recorded_at: datetime

    def causes(self, *, actor: str, node_id: str | None = None) -> Metadata:
        """Metadata for an event this one caused: the same correlation, caused by this event."""
        return Metadata(
            correlation_id=self.metadata.correlation_id,
            causation_id=event_id(self.position),
            actor=actor,
            node_id=node_id,
        )


E = TypeVar("E", bound=type[Event])
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class EventRegistry:
    """Maps type names to Struct classes and holds the upcasters between schema versions."""

    def __init__(self) -> None:
        self._types: dict[str, type[Event]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: E) -> E:
        """Class decorator: make `cls` readable and writable under its class name."""
        name = cls.__name__
        if name in self._types and self._types[name] is not cls:
            raise ValueError(f"event type {name} registered twice")
        self._types[name] = cls
        return cls

    def upcaster(self, name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register the function that turns `name` v`from_version` into v+1."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(name, from_version)] = fn
            return fn

        return decorate

    def cls(self, name: str) -> type[Event]:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownEventType(f"unknown event type {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._types)

    def upcast(self, name: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Bring `data` stored at schema `version` up to the current version of `name`."""
        current = self.cls(name).schema_version
        while version < current:
            step = self._upcasters.get((name, version))
            if step is None:
                raise UnknownEventType(f"no upcaster for {name} v{version} -> v{version + 1}")
            data = step(data)
            version += 1
        return data


registry = EventRegistry()
event = registry.register
