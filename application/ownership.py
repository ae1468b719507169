"""An account's own aggregates: another account's is not found, like one that does not exist."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol, TypeVar

import asyncpg

from spool.adapters.repository import ChangingTooFast, Repository
from spool.domain.errors import Conflict, NotFound
from spool.domain.events import Event, Metadata


class Owned(Protocol):
    """An aggregate's state that names the account it belongs to."""

    @property
    def account_id(self) -> str: ...


S = TypeVar("S", bound=Owned)


async def load_owned(repository: Repository[S], account_id: str, raw_id: str, what: str) -> S:
    """The aggregate `raw_id` (a UUID) of the account's, exact to its last event.

    Raises:
        NotFound: `"{what} not found"`, for an id that is no UUID, no such aggregate, or
            another account's (which it must not learn exists).
    """
    try:
        aggregate_id = str(uuid.UUID(raw_id))
    except ValueError:
        raise NotFound(f"{what} not found") from None
    state = await repository.load(aggregate_id)
    if state is None or state.account_id != account_id:
        raise NotFound(f"{what} not found")
    return state


async def decide_owned(
    repository: Repository[S],
    account_id: str,
    raw_id: str,
    what: str,
    decision: Callable[[S], list[Event]],
    meta: Metadata,
    *,
    conn: asyncpg.Connection | None = None,
) -> S:
    """Run a command on one of the account's aggregates (`load_owned`'s NotFound for anyone
    else's); the state after it. Conflict when others keep changing it under the command."""
    await load_owned(repository, account_id, raw_id, what)
    try:
        done = await repository.execute(str(uuid.UUID(raw_id)), decision, meta, conn=conn)
    except ChangingTooFast:
        raise Conflict(f"The {what.lower()} is changing too fast; try again") from None
    assert done.state is not None
    return done.state
