"""Every way PostgreSQL can refuse a connection is an outage: 503 with `Retry-After` on every
surface, in that surface's own shape; `/health` names the part that is down, and shows the
driver's words (hosts, databases, roles) to an admin only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from spool.adapters.database import unreachable, with_database
from spool.api.unavailable import MESSAGE, RETRY_AFTER
from tests.cluster_api_helpers import fresh_api

Break = Callable[[asyncpg.Connection, str], Awaitable[None]]


async def _refuse_connections(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')


async def _drop(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def server(fresh_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    admin = await asyncpg.connect(with_database(fresh_database_url, "postgres"))
    try:
        yield admin
    finally:
        await admin.close()


@pytest.mark.parametrize("outage", [_refuse_connections, _drop], ids=["not_accepting", "dropped"])
async def test_a_database_that_refuses_connections_is_a_503_on_every_surface(
    fresh_database_url: str, redis_url: str, server: asyncpg.Connection, outage: Break
) -> None:
    name = fresh_database_url.rsplit("/", 1)[1]
    async with fresh_api(fresh_database_url, redis_url) as api:
        await outage(server, name)
        # Every pooled connection is replaced on its next use, which now meets the refusal.
        await server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await api.pool.expire_connections()
        surfaces = [
            ("GET", "/jobs", api.user(), "error"),
            ("GET", "/api/v1/tasks", api.user(), "message"),
            ("GET", "/api/cluster/viewers", api.admin(), "message"),
            ("POST", "/api/auth/token", api.user(), "message"),
        ]
        for method, path, headers, field in surfaces:
            answer = await api.client.request(method, path, headers=headers)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["retry-after"] == RETRY_AFTER, path
            assert answer.json()[field] == MESSAGE, path
        envelope = (await api.client.get("/api/v1/tasks", headers=api.user())).json()
        assert envelope["error_details"]["reason"] == "database_unavailable"

        health = await api.client.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["components"]["database"] == "unhealthy"
        assert body["components"]["redis"] == "healthy"
        # Without an admin key, nothing of the driver's text: not the database's name.
        assert name not in health.text
        assert body["details"]["database"]["error"] == "unreachable"


async def test_health_shows_an_admin_what_the_driver_said(
    fresh_database_url: str, redis_url: str, server: asyncpg.Connection
) -> None:
    name = fresh_database_url.rsplit("/", 1)[1]
    async with fresh_api(fresh_database_url, redis_url) as api:
        assert (await api.client.get("/jobs", headers=api.admin())).status_code == 200
        await _refuse_connections(server, name)
        await server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await api.pool.expire_connections()
        # The admin's key was verified a moment ago, so it is known without the database.
        body = (await api.client.get("/health", headers=api.admin())).json()
        assert "not currently accepting connections" in body["details"]["database"]["error"]
        await server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def test_too_many_connections_and_a_read_only_standby_are_outages(
    fresh_database_url: str, server: asyncpg.Connection
) -> None:
    # The server's own refusals, as asyncpg raises them.
    role = f"spool_limited_{uuid.uuid4().hex[:8]}"
    await server.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        with pytest.raises(asyncpg.PostgresError) as full:
            await asyncpg.connect(fresh_database_url, user=role)
    finally:
        await server.execute(f"DROP ROLE {role}")
    assert full.value.sqlstate == "53300"
    assert unreachable(full.value)

    standby = await asyncpg.connect(fresh_database_url)
    try:
        await standby.execute("SET default_transaction_read_only = on")
        with pytest.raises(asyncpg.PostgresError) as read_only:
            await standby.execute("INSERT INTO checkpoints (name, tx, position) VALUES ('x', 0, 0)")
    finally:
        await standby.close()
    assert read_only.value.sqlstate == "25006"
    assert unreachable(read_only.value)

    # A connection broken mid-query by the outage and taken again fails before sending
    # anything: tried again once the server answers, as a worker's result must be.
    broken = asyncpg.InternalClientError(
        "cannot switch to state 11; another operation (2) is in progress"
    )
    assert unreachable(broken)
    assert not unreachable(asyncpg.InternalClientError("unexpected message from the server"))

    # A request's own fault is still not an outage.
    with pytest.raises(asyncpg.PostgresError) as bad:
        await server.execute("SELECT 1/0")
    assert not unreachable(bad.value)
