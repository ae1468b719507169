"""What a projection is: a read model built from the log, which the runner keeps up to date
(reactors/projection.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import asyncpg
import sqlalchemy as sa

from spool.domain.aggregate import event_types
from spool.domain.events import Event, RecordedEvent


class Projection(Protocol):
    """A read model built from the log. `apply` must only write to `tables`."""

    name: str
    tables: Sequence[sa.Table]
    event_types: frozenset[str]

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        """Write the effect of `events` (already in commit order) to the projection's tables."""


def types_of(*classes: type[Event]) -> frozenset[str]:
    """The type names of event classes, as the log stores them and `event_types` lists them."""
    return event_types(classes)
