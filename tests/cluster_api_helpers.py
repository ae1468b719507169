"""Helpers for the cluster API's tests: nodes registered by their events, keys, envelopes."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from litestar import Litestar

from spool.adapters.database import create_pool
from spool.adapters.event_store import AppendResult, EventStore, StreamAppend
from spool.adapters.queue import connect
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.adapters.timed_event_store import TimedEventStore
from spool.api.app import create_app
from spool.api.cluster_redis import close_redis
from spool.api.services import services_of
from spool.domain import node
from spool.domain.events import Metadata, NewEvent
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from spool.reactors.projections import all_projections

GB = 1024**3


def node_started(
    node_id: str,
    *,
    role: str = "compute",
    platform: str = "linux",
    tags: tuple[str, ...] = (),
    cpu_count: int = 8,
    memory_total_gb: float = 16.0,
    storage_total_gb: float = 500.0,
    has_gpu: bool = False,
    ip: str = "192.168.1.101",
) -> node.NodeStarted:
    return node.NodeStarted(
        node_id=node_id,
        hostname=f"host-{node_id}",
        ip=ip,
        role=role,
        tags=list(tags),
        capabilities=node.Capabilities(
            cpu_count=cpu_count,
            memory_total_gb=memory_total_gb,
            storage_total_gb=storage_total_gb,
            has_gpu=has_gpu,
            platform=platform,
        ),
        concurrency={"download": 2, "mux": 1, "upload": 2},
    )


def heartbeat(node_id: str, *, cpu: float = 25.0, muxing: int = 0) -> node.NodeHeartbeat:
    return node.NodeHeartbeat(
        node_id=node_id,
        hostname=f"host-{node_id}",
        ip="192.168.1.101",
        downloading=1,
        muxing=muxing,
        uploading=0,
        running=["job-x:1:download:1"],
        usage=node.Usage(
            cpu_percent=cpu,
            memory_used=4 * GB,
            memory_total=16 * GB,
            disk_free=400 * GB,
            disk_total=500 * GB,
        ),
    )


async def append_node(
    store: EventStore, runner: ProjectionRunner | None, node_id: str, *events: node.Event
) -> AppendResult:
    """Append `events` to the node's stream, as the node would; wait for `nodes` to see them."""
    meta = Metadata(actor=f"node:{node_id}", node_id=node_id)
    result = await store.append(node.stream_id(node_id), [NewEvent(e, meta) for e in events], None)
    if runner is not None:
        await runner.wait_until("nodes", result.checkpoint)
    return result


async def register(
    store: EventStore, runner: ProjectionRunner, node_id: str, **options: Any
) -> None:
    """A node that registered and beat once just now: online."""
    await append_node(store, runner, node_id, node_started(node_id, **options), heartbeat(node_id))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_envelope(body: dict[str, Any]) -> None:
    """The seed's success envelope."""
    assert body["status"] == "success", body
    assert {"data", "timestamp", "request_id"} <= body.keys()
    assert body["timestamp"].endswith("Z")


def assert_error(body: dict[str, Any], code: str) -> None:
    """The seed's error envelope with `code`."""
    assert body["status"] == "error", body
    assert body["error_code"] == code, body
    assert {"message", "error_details", "timestamp", "request_id"} <= body.keys()


@dataclass
class FreshApi:
    """The API over a database of its own: for tests that need the whole cluster to themselves."""

    client: httpx.AsyncClient
    app: Litestar
    pool: asyncpg.Pool
    store: EventStore
    runner: ProjectionRunner
    key: str
    admin_key: str
    account_id: str
    """The account `key` belongs to."""

    def admin(self) -> dict[str, str]:
        return {"X-API-Key": self.admin_key}

    def user(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


@contextlib.asynccontextmanager
async def fresh_api(
    database_url: str, redis_url: str | None, *, give_redis: bool = True, **settings: Any
) -> AsyncIterator[FreshApi]:
    """An app (own pool, store, runner, keys) over `database_url`; `settings` override.

    `give_redis=False` leaves the app to open `redis_url` itself (as a test app would).
    """
    pool = await create_pool(database_url, max_size=10)
    redis = await connect(redis_url) if redis_url and give_redis else None
    try:
        store = TimedEventStore(pool)
        runner = ProjectionRunner(store, all_projections())
        user = await issue(store, name="user", admin=False)
        admin = await issue(store, name="admin", admin=True)
        await runner.wait_until("api_keys", max(user.at, admin.at))
        app = create_app(
            pool=pool,
            store=store,
            settings=Settings(
                **{
                    "database_url": database_url,
                    "redis_url": redis_url,
                    "secret_key": "test-secret-key",
                    "rate_limit": 100_000,
                    **settings,
                }
            ),
            storage=LocalStorage(Path(tempfile.mkdtemp(prefix="spool-storage-"))),
            redis=redis,
            projection_types={p.name: p.event_types for p in runner.projections},
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://spool.test"
        ) as client:
            try:
                yield FreshApi(
                    client, app, pool, store, runner, user.key, admin.key, user.account_id
                )
            finally:
                # httpx does not run the app's lifespan: shut down what the app opened.
                await services_of(app).feed.stop()
                await close_redis(services_of(app))
    finally:
        if redis is not None:
            await redis.aclose()
        await pool.close()


async def append_heartbeats(store: EventStore, node_id: str, day: date, n: int) -> None:
    """`n` heartbeats of a node into its stream of `day`, in one batched append."""
    meta = Metadata(actor=f"node:{node_id}", node_id=node_id)
    stream = node.heartbeat_stream_id(node_id, day)
    await store.append_many(
        [StreamAppend(stream, [NewEvent(heartbeat(node_id, cpu=float(i)), meta)]) for i in range(n)]
    )
