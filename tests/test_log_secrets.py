"""No secret in any log line of any process: a real cluster driven through every way in.

`spool api`, `spool reactors` and a `spool worker` (at debug level) run as child processes
over PostgreSQL, Redis, moto's S3 and the loopback media server, each with secrets in its
configuration (the database password, the server secret, the scrape token, the storage's
secret key). The test then authenticates every way a client can (`x-api-key`,
`Authorization: Bearer`, the health socket's JWT, `?token=` on a media link, `?api_key=` on
`/ws`), configures a user storage with secret credentials, sends requests that fail, and reads
every process's whole log output for any of those secrets.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.keys import issue
from tests.fixtures.media import MediaServer
from tests.fixtures.processes import SpoolProcesses
from tests.fixtures.s3 import S3Server


def _secret(name: str) -> str:
    return f"{name}-{secrets.token_hex(12)}"


@dataclass
class Secrets:
    admin_key: str = "sk_" + secrets.token_urlsafe(32)
    wrong_key: str = "sk_" + secrets.token_urlsafe(32)
    server_secret: str = _secret("server-secret")
    metrics_token: str = _secret("scrape-token")
    database_password: str = _secret("db-password")
    cluster_storage_secret: str = _secret("cluster-storage-secret")
    user_storage_secret: str = _secret("user-storage-secret")
    job_storage_secret: str = _secret("job-storage-secret")
    user_key: str = ""
    jwt: str = ""

    def all(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


@dataclass
class Running:
    url: str
    procs: SpoolProcesses
    secrets: Secrets
    store: EventStore


@pytest.fixture
async def running(
    fresh_database_url: str,
    redis_url: str,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> AsyncIterator[Running]:
    given = Secrets()
    # PostgreSQL here trusts loopback: the password is checked by nobody, only carried.
    database_url = fresh_database_url.replace(
        "postgresql://postgres@", f"postgresql://postgres:{given.database_password}@"
    )
    assert given.database_password in database_url
    storage_url = (
        f"s3://{s3_bucket}/media?endpoint={s3_server.endpoint_url}&region={s3_server.region}"
        f"&access_key=AKIACLUSTERSTORAGE&secret_key={given.cluster_storage_secret}"
    )
    procs = SpoolProcesses(
        tmp_path,
        {
            "SPOOL_DATABASE_URL": database_url,
            "SPOOL_REDIS_URL": redis_url,
            "SPOOL_STORAGE_URL": storage_url,
            "SPOOL_URL_ALLOWLIST": "127.0.0.1",
            "SPOOL_DATA_DIR": str(tmp_path / "data"),
            "SPOOL_SECRET_KEY": given.server_secret,
            "SPOOL_METRICS_TOKEN": given.metrics_token,
            "SPOOL_RATE_LIMIT": "0",
            "SPOOL_STAGE_ATTEMPTS": "1",
            "SPOOL_RETRY_BACKOFF": "0.1",
        },
    )
    pool = await create_pool(fresh_database_url)
    try:
        with procs.kept_logs():
            url = await asyncio.to_thread(procs.api, SPOOL_API_KEY=given.admin_key)
            procs.start("reactors", "reactors")
            procs.start(
                "worker",
                "-v",  # debug: the chattiest a process gets (botocore, arq, asyncpg)
                "worker",
                SPOOL_NODE_ID="leak-worker",
                SPOOL_DATA_DIR=str(tmp_path / "nodes" / "leak-worker"),
            )
            yield Running(url, procs, given, EventStore(pool))
    finally:
        await asyncio.to_thread(procs.stop_all)
        await pool.close()


async def _until_ok(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while (await client.get(path, headers=headers)).status_code != 200:
        assert time.monotonic() < deadline, f"{path} never answered 200"
        await asyncio.sleep(0.2)


async def _finished(client: httpx.AsyncClient, job_id: str, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while True:
        # Authorization: Bearer, the other header a key travels in.
        answer = await client.get(f"/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["status"] in ("Completed", "Failed"):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.3)


async def _drive_every_auth_path(
    run: Running, s3_server: S3Server, media_server: MediaServer
) -> None:
    given = run.secrets
    admin = {"x-api-key": given.admin_key}
    ws_url = run.url.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=run.url, timeout=30) as client:
        given.user_key = (await issue(run.store, name="leak-user", admin=False)).key
        user = {"x-api-key": given.user_key}
        await _until_ok(client, "/jobs", user)

        # A storage of the user's own, with a secret key; the account's uploads go there.
        bucket = f"user-{uuid.uuid4().hex[:16]}"
        s3_server.client().create_bucket(Bucket=bucket)
        configured = await client.post(
            "/user/s3",
            json={
                "endpoint": s3_server.endpoint_url,
                "bucket": bucket,
                "region": "us-east-1",
                "access_key": "AKIAUSERSTORAGE0",
                "secret_key": given.user_storage_secret,
            },
            headers=user,
        )
        assert configured.status_code == 201, configured.text

        created = await client.post(
            "/jobs", json={"url": media_server.url("clip.mp4")}, headers=user
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        done = await _finished(client, job_id, given.user_key)
        assert done["status"] == "Completed", done

        # The health socket: a JWT for the key, then `auth <JWT>` and commands.
        token = await client.post("/api/auth/token", headers=user)
        assert token.status_code == 200, token.text
        given.jwt = token.json()["token"]
        # The socket's address carries the token too, as clients often put it (uvicorn prints
        # the address with its query).
        async with websockets.connect(f"{ws_url}/api/health/ws?token={given.jwt}") as ws:
            await ws.send(f"auth {given.jwt}")
            assert await ws.recv() == "ok"
            await ws.send("sysinfo")
            assert str(await ws.recv()).startswith("{")
            await ws.send("network")  # refused to a user: logged nowhere with the token
            assert str(await ws.recv()).startswith("error: ")

        # A media link carrying the JWT in its query.
        media = await client.get(f"/media/{job_id}", params={"token": given.jwt})
        assert media.status_code == 200, media.text[:200]

        # `/ws` with the key in its query, and with a wrong one (refused at the handshake).
        async with websockets.connect(f"{ws_url}/ws?api_key={given.user_key}") as ws:
            assert '"connected"' in str(await ws.recv())
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{ws_url}/ws?api_key={given.wrong_key}"):
                pass

        # /metrics by the scrape token and by the admin key; the cluster read by Bearer.
        scraped = await client.get(
            "/metrics", headers={"Authorization": f"Bearer {given.metrics_token}"}
        )
        assert scraped.status_code == 200, scraped.text
        assert (await client.get("/metrics", headers=admin)).status_code == 200
        devices = await client.get(
            "/api/v1/devices", headers={"Authorization": f"Bearer {given.admin_key}"}
        )
        assert devices.status_code == 200, devices.text

        # Requests that fail: a wrong key, a wrong key in the query, a job's own storage whose
        # endpoint does not answer, a job whose download fails.
        assert (
            await client.get("/jobs", headers={"x-api-key": given.wrong_key})
        ).status_code == 401
        assert (
            await client.get("/jobs", params={"api_key": given.user_key, "token": given.jwt})
        ).status_code == 401
        unreachable = await client.post(
            "/jobs",
            json={
                "url": media_server.url("clip.mp4"),
                "storage": {
                    "provider": "s3",
                    "endpoint": "http://127.0.0.1:9",
                    "bucket": "nowhere-bucket",
                    "access_key": "AKIAJOBSTORAGE00",
                    "secret_key": given.job_storage_secret,
                },
            },
            headers=user,
        )
        assert 400 <= unreachable.status_code < 500, unreachable.text
        failing = await client.post(
            "/jobs", json={"url": media_server.url("missing.mp4")}, headers=user
        )
        assert failing.status_code == 201, failing.text
        failed = await _finished(client, failing.json()["job_id"], given.user_key)
        assert failed["status"] == "Failed", failed


async def test_no_key_token_or_storage_secret_reaches_any_processs_log(
    running: Running, s3_server: S3Server, media_server: MediaServer
) -> None:
    with running.procs.kept_logs():
        await _drive_every_auth_path(running, s3_server, media_server)
    await asyncio.to_thread(running.procs.stop_all)  # every line written and flushed
    logs = {
        name: (running.procs.root / f"{name}.log").read_text(errors="replace")
        for name in running.procs.procs
    }
    assert set(logs) == {"api", "reactors", "worker"}
    leaks = [
        f"{what} in the {name} log"
        for name, text in logs.items()
        for what, secret in running.secrets.all().items()
        if secret in text
    ]
    assert leaks == []

    # The lines that carried them are there, with the secret taken out: uvicorn's lines for
    # the websockets (query included), the request log's, the worker's work.
    api_log = logs["api"]
    assert "/ws?api_key=[redacted]" in api_log
    assert "/api/health/ws?token=[redacted]" in api_log
    assert '"path":"/jobs"' in api_log
    assert "leak-worker" in logs["worker"] and "DEBUG" in logs["worker"]
