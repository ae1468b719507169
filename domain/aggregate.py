"""The contract every aggregate module keeps, and the one fold all of them use.

An aggregate module (`domain/job.py`, `batch.py`, `task.py`, `viewer.py`, `account.py`,
`account_policy.py`, `storage_config.py`, `cluster_config.py`, `node.py`) holds its events, a
frozen state, `evolve(state, event, at, version)`, decide functions that return events and raise
only `DomainError`s, `stream_id(id)`, and `AGGREGATE`: this descriptor, from which
`adapters.repository.Repository` is built in one line. See docs/architecture.md, "Aggregates".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeAlias, TypeVar

from spool.domain.events import Event, RecordedEvent

S = TypeVar("S")

Step: TypeAlias = tuple[Event, datetime, int]
"""One event of a stream as a fold takes it: the event, when it was recorded, its version."""


def steps(recorded: Iterable[RecordedEvent]) -> Iterator[Step]:
    """Recorded events as the steps a fold takes."""
    return ((e.data, e.recorded_at, e.version) for e in recorded)


@dataclass(frozen=True)
class Aggregate(Generic[S]):
    """What a repository needs of an aggregate, and its fold.

    `evolve(state, event, at, version)` returns the state after one event (a new value: states
    are frozen); on a stream shared with other aggregates (`account-<id>`) it returns the state
    unchanged for events that are not its own. `initial` is the state before any event: None
    where the aggregate needs a creation event, a value where it has defaults (a config, an
    account with no keys), on which a first command may decide.
    """

    name: str
    stream_id: Callable[[str], str]
    evolve: Callable[[S | None, Event, datetime, int], S | None]
    event_classes: tuple[type[Event], ...]
    initial: S | None = None
    snapshot_version: int = 1
    """The shape of the state a snapshot row holds (`jobs.state`, the `viewers` row). Raise it
    when the state's fields or evolve's meaning change: the projection stamps every row it
    writes with it, and rows stamped otherwise are ignored and the stream folded instead, until
    the projection writes the job's row again on its next event (a viewer's row: never, it goes
    when the viewer leaves) or `spool projections rebuild` writes them all anew."""
    event_types: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "event_types", event_types(self.event_classes))

    def fold(self, events: Iterable[Step]) -> S | None:
        """The state after `events`, in stream order, from `initial`."""
        evolve, state = self.evolve, self.initial
        for ev, at, version in events:
            state = evolve(state, ev, at, version)
        return state


def event_types(classes: Iterable[type[Event]]) -> frozenset[str]:
    """The type names of event classes, as stored in the log."""
    return frozenset(c.__name__ for c in classes)
