"""The `spool` command against the run's database, and `spool up` on embedded defaults."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from adapters.event_store import EventStore
from spool.embedded import free_port
from tests.fixtures.media import MediaServer, media_duration
from tests.fixtures.processes import REPO_ROOT, SpoolProcesses, child_env, wait_http

SPOOL = [sys.executable, "-m", "spool"]


def _spool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A `spool` command run to its end, configured by its flags alone (the CLI is the subject)."""
    return subprocess.run(
        [*SPOOL, *args],
        env=child_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_keys_create_prints_a_key_that_works_at_once(
    database_url: str, client: httpx.AsyncClient
) -> None:
    done = _spool("keys", "create", "--name", "ci robot", "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("sk_")

    answer = await client.post(
        "/jobs", json={"url": "http://media.test/k.mp4"}, headers={"x-api-key": key}
    )
    assert answer.status_code == 201


async def test_keys_are_stored_only_as_digests(database_url: str, store: EventStore) -> None:
    done = _spool(
        "keys",
        "create",
        "--name",
        "digest check",
        "--admin",
        "--database-url",
        database_url,
    )
    key = done.stdout.strip().splitlines()[-1]
    everywhere = await store.pool.fetchval(
        "SELECT count(*) FROM events WHERE data::text LIKE '%' || $1 || '%' "
        "OR metadata::text LIKE '%' || $1 || '%'",
        key,
    )
    in_keys_table = await store.pool.fetchval(
        "SELECT count(*) FROM api_keys WHERE key_hash = $1 OR hint = $1", key
    )
    assert (everywhere, in_keys_table) == (0, 0)
    admin = await store.pool.fetchval("SELECT admin FROM api_keys WHERE name = 'digest check'")
    assert admin is True


def test_a_blank_key_name_is_a_clear_cli_error(database_url: str) -> None:
    done = _spool("keys", "create", "--name", "  ", "--database-url", database_url)
    assert done.returncode == 2
    assert "--name" in done.stderr and "blank" in done.stderr


def test_rebuilding_an_unknown_projection_names_the_known_ones(database_url: str) -> None:
    done = _spool("projections", "rebuild", "nope", "--database-url", database_url)
    assert done.returncode == 2
    assert "jobs" in done.stderr and "api_keys" in done.stderr


async def test_projections_rebuild_keeps_every_row(
    database_url: str, client: httpx.AsyncClient, api_key: str, store: EventStore
) -> None:
    for i in range(3):
        await client.post(
            "/jobs", json={"url": f"http://media.test/r{i}.mp4"}, headers={"x-api-key": api_key}
        )
    done = _spool("projections", "rebuild", "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    assert "jobs: rebuilt from" in done.stdout
    jobs_in_log = await store.pool.fetchval("SELECT count(*) FROM events WHERE type = 'JobCreated'")
    assert await store.pool.fetchval("SELECT count(*) FROM jobs") == jobs_in_log
    listing = await client.get("/jobs", headers={"x-api-key": api_key})
    assert len(listing.json()["jobs"]) == 3


def test_spool_up_runs_a_job_to_completion_on_embedded_defaults(
    tmp_path: Path, media_server: MediaServer
) -> None:
    """The first command a new user runs: no Postgres, Redis or storage configured."""
    port = free_port()
    key = "sk_smoke_test_key_0123456789abcdef"
    data_dir = tmp_path / "data"
    procs = SpoolProcesses(tmp_path, {"SPOOL_API_KEY": key})
    proc = procs.start(
        "up",
        "up",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--url-allowlist",
        "127.0.0.1/32",
        "--node-id",
        "smoke-node",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", 120, proc)

        headers = {"x-api-key": key}
        created = httpx.post(
            f"{base}/jobs",
            json={"url": media_server.url("clip.mp4"), "filename": "smoke"},
            headers=headers,
        )
        assert created.status_code == 201
        job_id = created.json()["job_id"]
        deadline = time.monotonic() + 90
        while (got := httpx.get(f"{base}/jobs/{job_id}", headers=headers).json())["status"] in (
            "Pending",
            "Processing",
        ):
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert got["status"] == "Completed", got
        # Under the account's folder of the default (local) storage, with a working link.
        assert got["storage_key"].startswith("accounts/")
        assert got["storage_key"].endswith("/smoke.mp4")
        stored = data_dir / "storage" / got["storage_key"]
        assert stored.exists()
        assert abs(media_duration(stored) - 2.0) < 0.3
        assert got["s3_url"].startswith(f"{base}/files/{job_id}/media?")
        linked = httpx.get(got["s3_url"])  # no key: the signed link is the permission
        assert linked.status_code == 200
        assert linked.content == stored.read_bytes()
        history = httpx.get(f"{base}/jobs/{job_id}/events", headers=headers).json()
        assert [e["type"] for e in history["events"]].count("JobCompleted") == 1
        stats = httpx.get(f"{base}/dashboard/cluster", headers=headers).json()
        assert set(stats) == {"total_downloading", "total_muxing", "total_uploading"}

        # A second spool process on the same data dir joins the running embedded server.
        second = _spool("keys", "create", "--name", "second", "--data-dir", str(data_dir))
        assert second.returncode == 0, second.stderr
        other = second.stdout.strip().splitlines()[-1]
        theirs = httpx.get(f"{base}/jobs/{job_id}", headers={"x-api-key": other})
        assert theirs.status_code == 404
    finally:
        procs.stop("up", seconds=60)
    assert proc.returncode == 0, procs.log("up")
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
