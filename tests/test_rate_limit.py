"""Rate limits per API key on `/api/v1`, shared by every API process through Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from spool.api.services import services_of
from tests.cluster_api_helpers import FreshApi, assert_error, fresh_api

LIMIT = 5


@pytest.fixture
async def two_apis(
    fresh_database_url: str, redis_url: str
) -> AsyncIterator[tuple[FreshApi, FreshApi]]:
    """Two API processes over one database and one Redis."""
    async with (
        fresh_api(fresh_database_url, redis_url, rate_limit=LIMIT) as a,
        fresh_api(fresh_database_url, redis_url, rate_limit=LIMIT) as b,
    ):
        # Counting happens per minute: do not start in the last seconds of one.
        if time.time() % 60 > 55:
            await asyncio.sleep(60 - time.time() % 60 + 0.1)
        # Callers without a key are counted by address, and every test's client is 127.0.0.1:
        # another test's anonymous requests this minute must not count against this one.
        redis = services_of(a.app).redis
        assert redis is not None
        anonymous = await redis.keys("spool:ratelimit:addr:*")
        if anonymous:
            await redis.delete(*anonymous)
        yield a, b


async def test_the_limit_is_shared_across_api_processes(
    two_apis: tuple[FreshApi, FreshApi],
) -> None:
    a, b = two_apis
    headers = a.user()
    remaining = []
    for api in (a, a, a, b, b):
        answer = await api.client.get("/api/v1/tasks", headers=headers)
        assert answer.status_code == 200
        remaining.append(int(answer.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]

    refused = await a.client.get("/api/v1/tasks", headers=headers)
    assert refused.status_code == 429
    assert_error(refused.json(), "RATE_LIMIT_EXCEEDED")
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    reset = int(refused.headers["X-RateLimit-Reset"])
    assert time.time() <= reset <= time.time() + 61  # epoch seconds, like the seed's example
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await b.client.get("/api/v1/tasks", headers=headers)).status_code == 429

    # Another key has its own allowance.
    other = await a.client.get("/api/v1/devices", headers=a.admin())
    assert other.status_code == 200
    assert other.headers["X-RateLimit-Remaining"] == str(LIMIT - 1)


async def test_the_job_api_and_the_dashboard_are_not_limited(
    two_apis: tuple[FreshApi, FreshApi],
) -> None:
    a, _ = two_apis
    for _ in range(LIMIT + 2):
        jobs = await a.client.get("/jobs", headers=a.user())
        assert jobs.status_code == 200
        assert "X-RateLimit-Remaining" not in jobs.headers
        dashboard = await a.client.get("/dashboard/cluster", headers=a.admin())
        assert dashboard.status_code == 200
        assert "X-RateLimit-Remaining" not in dashboard.headers


async def test_every_cluster_api_answer_carries_the_headers(
    two_apis: tuple[FreshApi, FreshApi],
) -> None:
    a, _ = two_apis
    anonymous = await a.client.get("/api/v1/devices")  # even a refusal counts and says so
    assert anonymous.status_code == 401
    assert anonymous.headers["X-RateLimit-Remaining"] == str(LIMIT - 1)
    missing = await a.client.get(
        f"/api/v1/devices/{uuid.uuid4().hex}", headers={"X-API-Key": a.admin_key}
    )
    assert missing.status_code == 404
    assert "X-RateLimit-Reset" in missing.headers
