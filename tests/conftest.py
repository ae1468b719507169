"""The one test harness: real PostgreSQL and Redis, a fresh database per run, the API in-process.

`SPOOL_TEST_DATABASE_URL` / `SPOOL_TEST_REDIS_URL` point the suite at running servers (CI uses
the machine's); without them it starts embedded ones, as `spool up` would. Several runs may
share those servers at once: each makes databases of its own on them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
from litestar import Litestar

from spool.adapters.cluster_identity import CLUSTER_KEY
from spool.adapters.database import create_database, create_pool, drop_database, migrate
from spool.adapters.event_store import EventStore
from spool.adapters.queue import connect
from spool.adapters.read_models import all_projections
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.api.app import create_app
from spool.embedded import EmbeddedPostgres, EmbeddedRedis
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.cluster_api_helpers import FreshApi, fresh_api
from tests.fixtures.databases import Databases
from tests.fixtures.embedded_postgres import postgres_data_dir
from tests.fixtures.processes import kill_processes_on_redis, spawned_since_last_check
from tests.fixtures.redis_database import own_redis_database

# Fixtures for real media (FFmpeg + loopback HTTP) and a real S3 server (moto) live beside this.
pytest_plugins = [
    "tests.fixtures.media",
    "tests.fixtures.s3",
    "tests.fixtures.cluster",
    "tests.fixtures.request_log",
]


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server to create test databases on."""
    given = os.environ.get("SPOOL_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with postgres_data_dir("suite-pg") as data_dir:
        pg = EmbeddedPostgres(data_dir)
        try:
            yield pg.start()
        finally:
            pg.stop()


@pytest.fixture
def embedded_pg_dir() -> Iterator[Path]:
    """A data folder for a test's own embedded PostgreSQL (`EmbeddedPostgres` or
    `spool up --data-dir` under it), outside pytest's temp root."""
    with postgres_data_dir("pg") as folder:
        yield folder


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis database of this test process's own: on the given server when one of its
    databases is free (tests/fixtures/redis_database.py), else on an embedded server."""
    given = os.environ.get("SPOOL_TEST_REDIS_URL")
    with contextlib.ExitStack() as held:
        url = held.enter_context(own_redis_database(given)) if given else None
        if url is None:
            server = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis"))
            url = server.start()
            held.callback(server.stop)
        yield url


@pytest.fixture(autouse=True)
def unclaimed_redis(redis_url: str) -> Iterator[None]:
    """Each test is a cluster of its own over the suite's Redis: it starts with that Redis not
    yet claimed by the cluster of a test before it (adapters/cluster_identity.py), and ends
    with no process of its own left on it, which would take the next test's units or claim
    the Redis again for this test's cluster."""
    if spawned_since_last_check():
        kill_processes_on_redis(redis_url)  # left by a test that failed before its own check
    _unclaim(redis_url)
    yield
    left = kill_processes_on_redis(redis_url) if spawned_since_last_check() else []
    # Also after: a module-scoped fixture of the next test starts before this fixture does.
    _unclaim(redis_url)
    assert left == [], f"the test left processes running on its Redis: {left}"


_unclaiming: dict[str, redis.Redis] = {}


def _unclaim(redis_url: str) -> None:
    # One connection for the whole run: a new one per test costs more than the DELETE.
    client = _unclaiming.get(redis_url)
    if client is None:
        client = _unclaiming[redis_url] = redis.Redis.from_url(redis_url)
    client.delete(CLUSTER_KEY)


@pytest.fixture(scope="session")
async def migrated_template(server_url: str) -> AsyncIterator[str]:
    """A database migrated to head once per run, copied for each test that needs its own.

    Copying a database is a file copy (about 0.2 s); migrating one takes about 1.7 s.
    Nothing ever connects to it after the migration, as CREATE DATABASE ... TEMPLATE requires.
    """
    name = f"spool_template_{uuid.uuid4().hex[:12]}"
    await migrate(await create_database(server_url, name))
    yield name
    await drop_database(server_url, name)


@pytest.fixture(scope="session")
async def databases(server_url: str, migrated_template: str) -> AsyncIterator[Databases]:
    """Where fresh databases come from: one made ahead, used ones dropped in the background."""
    supply = Databases(server_url, migrated_template)
    yield supply
    await supply.close()


@pytest.fixture(scope="session")
async def database_url(databases: Databases) -> AsyncIterator[str]:
    """A database of this test run's own, migrated to head, dropped at the end."""
    name, url = await databases.take()
    yield url
    databases.give_back(name)


@pytest.fixture
async def fresh_database_url(databases: Databases) -> AsyncIterator[str]:
    """A database of this one test's own, for tests that look at the whole log."""
    name, url = await databases.take()
    yield url
    databases.give_back(name)


@pytest.fixture(scope="module")
async def module_api(databases: Databases, redis_url: str) -> AsyncIterator[FreshApi]:
    """An API over a fresh database of the module's own, for the module's tests that change
    nothing (reads of one fixed data set, refused requests): one setup, not one per test."""
    name, url = await databases.take()
    try:
        async with fresh_api(url, redis_url) as api:
            yield api
    finally:
        databases.give_back(name)


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # Held by each test process for the whole session, idle connections included: the
    # server's 100 are shared with every cluster and child process the suite runs at once.
    p = await create_pool(database_url, min_size=2, max_size=8)
    yield p
    await p.close()


@pytest.fixture(scope="session")
def store(pool: asyncpg.Pool) -> EventStore:
    return EventStore(pool)


@pytest.fixture(scope="session")
def runner(store: EventStore) -> ProjectionRunner:
    return ProjectionRunner(store, all_projections())


def api_client(app: Litestar) -> httpx.AsyncClient:
    """An HTTP client bound to `app` in this event loop (so it can share the test's pool)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://spool.test")


@pytest.fixture(scope="session")
async def client(
    pool: asyncpg.Pool,
    store: EventStore,
    database_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API, in-process, over the run's database (storage: a local folder).

    Its rate limit is far above what a test sends: tests of the limit build apps of their own.
    """
    storage = LocalStorage(tmp_path_factory.mktemp("storage"))
    redis = await connect(redis_url)
    app = create_app(
        pool=pool,
        store=store,
        settings=Settings(
            database_url=database_url,
            redis_url=redis_url,
            secret_key="test-secret-key",
            rate_limit=100_000,
        ),
        storage=storage,
        redis=redis,
    )
    async with api_client(app) as c:
        yield c
    await redis.aclose()


@pytest.fixture
async def api_key(store: EventStore, runner: ProjectionRunner) -> str:
    """A fresh account's key, usable at once."""
    issued = await issue(store, name=f"test-{uuid.uuid4().hex[:6]}", admin=False)
    await runner.wait_until("api_keys", issued.at)
    return issued.key


@pytest.fixture
async def admin_key(store: EventStore, runner: ProjectionRunner) -> str:
    """A fresh admin key (the cluster API's "Requires Authentication" endpoints), usable at once."""
    issued = await issue(store, name=f"admin-{uuid.uuid4().hex[:6]}", admin=True)
    await runner.wait_until("api_keys", issued.at)
    return issued.key


@pytest.fixture
async def other_api_key(store: EventStore, runner: ProjectionRunner) -> str:
    """A second, unrelated account's key."""
    issued = await issue(store, name="someone-else", admin=False)
    await runner.wait_until("api_keys", issued.at)
    return issued.key


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
