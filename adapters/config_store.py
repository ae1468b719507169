"""The cluster config's exact state (the `config` stream folded) and the projection's view."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import msgspec

from adapters.event_store import AppendResult, EventStore
from domain import cluster_config as config
from domain.errors import ConcurrencyError
from domain.events import Event, Metadata, NewEvent

_decode_heartbeat = msgspec.json.Decoder(config.HeartbeatConfig).decode


async def load_config(store: EventStore) -> config.ClusterConfig:
    """The config folded from its stream: exact, for deciding a change (a short stream)."""
    return config.fold(await store.read_stream(config.STREAM_ID, 1))


async def change_config(
    store: EventStore,
    decide: Callable[[config.ClusterConfig], list[Event]],
    meta: Metadata,
) -> tuple[config.ClusterConfig, AppendResult | None]:
    """Decide on the current config and append at the version read; retried on a clash.

    InvalidConfig from `decide` propagates. Returns the new config and where it landed.
    """
    for _ in range(10):
        events = await store.read_stream(config.STREAM_ID, 1)
        state = config.fold(events)
        decided = decide(state)
        if not decided:
            return state, None
        try:
            result = await store.append(
                config.STREAM_ID, [NewEvent(e, meta) for e in decided], state.version
            )
        except ConcurrencyError:
            continue
        return config.fold(await store.read_stream(config.STREAM_ID, 1)), result
    raise ConcurrencyError(config.STREAM_ID, None)


async def heartbeat_config(pool: asyncpg.Pool) -> config.HeartbeatConfig:
    """The heartbeat settings as the projection holds them (defaults before any change)."""
    row = await pool.fetchval("SELECT settings FROM cluster_config WHERE section = 'heartbeat'")
    return _decode_heartbeat(row) if row is not None else config.HeartbeatConfig()
