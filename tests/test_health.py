"""`GET /health`: each component really checked; 200 only when all of them are healthy."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from spool.api import health as health_module
from spool.domain import task
from spool.domain.events import NewEvent
from tests.cluster_api_helpers import FreshApi, fresh_api

COMPONENTS = {"api", "database", "redis", "scheduler", "cluster_server", "task_scheduler"}


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def scheduler_caught_up(api: FreshApi) -> None:
    """What the scheduler reactor leaves behind once it has read the whole log."""
    await api.pool.execute(
        """
        INSERT INTO checkpoints (name, tx, position)
        SELECT 'scheduler', coalesce(max(tx::text::bigint), 0), coalesce(max(position), 0)
        FROM events
        ON CONFLICT (name) DO UPDATE SET tx = excluded.tx, position = excluded.position,
            updated_at = now()
        """
    )


@pytest.fixture
async def api(fresh_database_url: str, redis_url: str) -> AsyncIterator[FreshApi]:
    async with fresh_api(fresh_database_url, redis_url) as a:
        yield a


async def test_everything_up_is_healthy(api: FreshApi) -> None:
    await scheduler_caught_up(api)
    answer = await api.client.get("/health")  # no key needed
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "healthy"
    assert body["timestamp"].endswith("Z")
    assert set(body["components"]) == COMPONENTS
    assert set(body["components"].values()) == {"healthy"}


async def test_a_scheduler_that_never_ran_is_reported_unknown(api: FreshApi) -> None:
    answer = await api.client.get("/health")
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "degraded"
    assert body["components"]["scheduler"] == "unknown"
    assert body["components"]["database"] == "healthy"
    assert body["components"]["redis"] == "healthy"


async def test_task_events_waiting_on_the_scheduler_make_it_unhealthy(
    api: FreshApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    await scheduler_caught_up(api)
    submitted = task.TaskSubmitted(task_id="t-1", account_id="acct", task_type="echo")
    await api.store.append(task.stream_id("t-1"), [NewEvent(submitted)], 0)
    monkeypatch.setattr(health_module, "SCHEDULER_STALE_SECONDS", 0.0)
    body = (await api.client.get("/health")).json()
    assert body["components"]["scheduler"] == "unhealthy"
    assert body["status"] == "degraded"
    await scheduler_caught_up(api)  # it reads the event: healthy again
    assert (await api.client.get("/health")).json()["components"]["scheduler"] == "healthy"


async def test_redis_down_is_unhealthy(fresh_database_url: str) -> None:
    down = f"redis://127.0.0.1:{closed_port()}/0"
    async with fresh_api(fresh_database_url, down, give_redis=False) as api:
        await scheduler_caught_up(api)
        answer = await api.client.get("/health")
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "unhealthy"
        assert body["components"]["redis"] == "unhealthy"
        assert body["components"]["cluster_server"] == "unhealthy"
        assert body["components"]["database"] == "healthy"
        assert body["details"]["redis"]["error"]
        # The rest of the API keeps serving without its rate limit.
        status = await api.client.get("/api/v1/cluster/status", headers=api.admin())
        assert status.status_code == 200
