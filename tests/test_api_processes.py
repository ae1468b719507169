"""`spool api --processes N` and `spool reactors`: several of each against one database."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from spool.adapters.database import create_database, create_pool, drop_database
from spool.adapters.event_store import EventStore
from spool.adapters.queue import DOWNLOAD_QUEUE, connect
from spool.api.health import PROCESS_HEADER
from spool.reactors.pipeline import MIN_AHEAD
from tests.cluster_api_helpers import append_node, node_started
from tests.fixtures.processes import MODULE_LIVED, SpoolProcesses


class Api:
    def __init__(self, url: str, key: str, store: EventStore, database_url: str) -> None:
        self.url = url
        self.key = key
        self.store = store
        self.database_url = database_url


@pytest.fixture(scope="module")
async def api(
    server_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    """`spool api --processes 2` on a free port over a new database, which it migrates."""
    name = f"spool_test_{uuid.uuid4().hex[:12]}"
    database_url = await create_database(server_url, name)
    key = "sk_" + secrets.token_urlsafe(24)
    root = tmp_path_factory.mktemp("api-processes")
    procs = SpoolProcesses(
        root,
        {
            "SPOOL_DATABASE_URL": database_url,
            "SPOOL_REDIS_URL": redis_url,
            "SPOOL_DATA_DIR": str(root / "data"),
            MODULE_LIVED: "1",
        },
    )
    try:
        with procs.kept_logs():
            url = await asyncio.to_thread(procs.api, "--processes", "2", SPOOL_API_KEY=key)
        pool = await create_pool(database_url)
        try:
            yield Api(url, key, EventStore(pool), database_url)
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(procs.stop_all)
        await drop_database(server_url, name)


async def _pids_answering(url: str, tries: int = 200) -> set[str]:
    """The API processes that answer `/health`, each request on a new connection."""
    pids: set[str] = set()
    for _ in range(tries):
        async with httpx.AsyncClient() as fresh:
            pids.add((await fresh.get(f"{url}/health")).headers[PROCESS_HEADER])
        if len(pids) > 1:
            break
    return pids


async def _next(ws: ClientConnection, wanted_type: str, within: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted_type} arrived"
        message: dict[str, object] = json.loads(await asyncio.wait_for(ws.recv(), left))
        if message["type"] == wanted_type:
            return message


async def _viewer_holders(store: EventStore) -> set[str]:
    rows = await store.pool.fetch(
        "SELECT DISTINCT data->>'node_id' FROM events WHERE type = 'ViewerConnected'"
    )
    return {r[0] for r in rows}


async def test_two_api_processes_both_answer_on_one_port(api: Api) -> None:
    assert len(await _pids_answering(api.url)) == 2


async def test_each_api_process_records_its_viewers_and_fans_updates_out(api: Api) -> None:
    connections: list[ClientConnection] = []
    try:
        # Open connections until both processes hold one: each records its own as viewer
        # streams under its own node id (written by that process's recorder within a second).
        deadline = time.monotonic() + 60
        while len(await _viewer_holders(api.store)) < 2:
            assert time.monotonic() < deadline, "the viewers did not reach both processes"
            ws = await websockets.connect(
                f"ws://{api.url.removeprefix('http://')}/ws?api_key={api.key}"
            )
            connections.append(ws)
            await _next(ws, "connected")
            await asyncio.sleep(1.2)
        holders = await _viewer_holders(api.store)
        assert len({h.rsplit("-", 1)[0] for h in holders}) == 1  # one host, two processes

        await append_node(api.store, None, "fan-out-node", node_started("fan-out-node"))
        for ws in connections:
            assert (await _next(ws, "device_online"))["device_id"] == "fan-out-node"
    finally:
        for ws in connections:
            await ws.close()


async def test_jobs_are_projected_by_two_reactor_processes_once_and_never_by_the_api(
    api: Api, redis_url: str, tmp_path: Path
) -> None:
    job_ids = []
    async with httpx.AsyncClient() as client:
        for n in range(20):
            created = await client.post(
                f"{api.url}/jobs",
                json={"url": f"http://media.test/{n}.mp4"},
                headers={"x-api-key": api.key},
            )
            assert created.status_code == 201, created.text
            job_ids.append(created.json()["job_id"])
    pool = api.store.pool
    await asyncio.sleep(2)  # time enough for a projection runner, were one running
    # Only the admin key's projection ran, in the parent before the API processes started.
    names = {r[0] for r in await pool.fetch("SELECT name FROM checkpoints")}
    assert names <= {"api_keys"}
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0

    procs = SpoolProcesses(
        tmp_path,
        {
            "SPOOL_DATABASE_URL": api.database_url,
            "SPOOL_REDIS_URL": redis_url,
            "SPOOL_DATA_DIR": str(tmp_path / "data"),
        },
    )
    procs.start("reactors-1", "reactors")
    procs.start("reactors-2", "reactors")
    try:
        deadline = time.monotonic() + 120

        async def settled(sql: str) -> int:
            """The value of `sql` once it reaches the number of jobs (or the deadline)."""
            while (value := await pool.fetchval(sql) or 0) < len(job_ids):
                assert time.monotonic() < deadline, procs.logs()
                await asyncio.sleep(0.2)
            return int(value)

        assert await settled("SELECT count(*) FROM jobs") == len(job_ids)
        # An event applied twice would count its job twice in the additive usage counters.
        assert await settled("SELECT sum(jobs_created) FROM usage_daily") == len(job_ids)
        # With no node online, two downloads are sent to Redis and the rest wait in the
        # pipeline's line: each job in exactly one of the two, each sent job queued once.
        while await pool.fetchval("SELECT count(*) FROM dispatch_waiting") < len(job_ids) - 2:
            assert time.monotonic() < deadline, procs.logs()
            await asyncio.sleep(0.2)
        waiting = {r[0] for r in await pool.fetch("SELECT job_id FROM dispatch_waiting")}
        redis = await connect(redis_url)
        try:
            queued = [m.decode() for m in await redis.zrange(DOWNLOAD_QUEUE, 0, -1)]
        finally:
            await redis.aclose()
        sent = [u.split(":", 1)[0] for u in queued]
        assert len(sent) == MIN_AHEAD and sorted({*sent, *waiting}) == sorted(job_ids)
    finally:
        procs.stop_all()
