"""The cluster config's exact state (the `config` stream folded) and the projection's view."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import msgspec

from spool.adapters.event_store import AppendResult, EventStore
from spool.adapters.repository import Repository
from spool.domain import cluster_config as config
from spool.domain.events import Event, Metadata

_decode_heartbeat = msgspec.json.Decoder(config.HeartbeatConfig).decode


def configs(store: EventStore) -> Repository[config.ClusterConfig]:
    """The cluster config's repository: its one stream, short, folded whole (exact).

    Before any change the stream is empty and the config is the defaults, on which the first
    change is decided."""
    return Repository(store, config.AGGREGATE)


async def load_config(store: EventStore) -> config.ClusterConfig:
    """The config folded from its stream: exact, for deciding a change (a short stream)."""
    return await configs(store).load(config.STREAM_ID) or config.ClusterConfig()


async def change_config(
    store: EventStore,
    decide: Callable[[config.ClusterConfig], list[Event]],
    meta: Metadata,
) -> tuple[config.ClusterConfig, AppendResult | None]:
    """Decide on the current config and append at the version read; retried on a clash.

    InvalidConfig from `decide` propagates. Returns the new config and where it landed.
    """
    state, appended = await configs(store).execute(config.STREAM_ID, decide, meta)
    assert state is not None  # the config always exists: `initial` is the defaults
    return state, appended


async def heartbeat_config(pool: asyncpg.Pool) -> config.HeartbeatConfig:
    """The heartbeat settings as the projection holds them (defaults before any change)."""
    row = await pool.fetchval("SELECT settings FROM cluster_config WHERE section = 'heartbeat'")
    return _decode_heartbeat(row) if row is not None else config.HeartbeatConfig()
