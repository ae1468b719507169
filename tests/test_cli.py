"""The `spool` command against the run's database, and `spool up` on embedded defaults."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from spool.adapters.event_store import EventStore
from spool.adapters.read_models import nodes
from spool.domain import account, node
from spool.domain.node_health import UnitFailure
from spool.embedded import free_port
from spool.reactors.projection import ProjectionRunner
from tests.cluster_api_helpers import append_node, register, unique
from tests.fixtures.media import MediaServer, media_duration
from tests.fixtures.processes import (
    REPO_ROOT,
    SpoolProcesses,
    child_env,
    stop_processes,
    wait_http,
)

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
    tmp_path: Path, embedded_pg_dir: Path, media_server: MediaServer
) -> None:
    """The first command a new user runs: no Postgres, Redis or storage configured."""
    port = free_port()
    key = "sk_smoke_test_key_0123456789abcdef"
    data_dir = embedded_pg_dir / "data"
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


async def test_spool_accounts_sets_quotas_and_grants_that_the_api_obeys(
    database_url: str, client: httpx.AsyncClient, store: EventStore
) -> None:
    made = _spool("keys", "create", "--name", "quota cli", "--database-url", database_url)
    key = made.stdout.strip().splitlines()[-1]
    account_id = await store.pool.fetchval(
        "SELECT account_id FROM api_keys WHERE key_hash = $1", account.hash_key(key)
    )

    quota = _spool(
        "accounts", "quota", account_id, "--per-day", "1", "--database-url", database_url
    )
    assert quota.returncode == 0, quota.stderr
    assert "max_jobs_per_day=1" in quota.stdout
    first = await client.post(
        "/jobs", json={"url": "http://media.test/c1.mp4"}, headers={"x-api-key": key}
    )
    assert first.status_code == 201
    second = await client.post(
        "/jobs", json={"url": "http://media.test/c2.mp4"}, headers={"x-api-key": key}
    )
    assert second.status_code == 429 and second.json()["quota"] == "max_jobs_per_day"

    # Other quotas are kept; `none` lifts one.
    more = _spool("accounts", "quota", account_id, "--running", "4", "--database-url", database_url)
    assert "max_jobs_per_day=1" in more.stdout and "max_running_jobs=4" in more.stdout
    lifted = _spool(
        "accounts", "quota", account_id, "--per-day", "none", "--database-url", database_url
    )
    assert "max_jobs_per_day" not in lifted.stdout
    third = await client.post(
        "/jobs", json={"url": "http://media.test/c3.mp4"}, headers={"x-api-key": key}
    )
    assert third.status_code == 201

    task = {"task_type": "command", "payload": {"command": "true"}}
    assert (
        await client.post("/api/v1/tasks", json=task, headers={"x-api-key": key})
    ).status_code == 403
    granted = _spool(
        "accounts", "grant", account_id, "--task-type", "command", "--env", "LANG",
        "--database-url", database_url,
    )  # fmt: skip
    assert granted.returncode == 0 and "grant: command (env: LANG)" in granted.stdout
    assert (
        await client.post("/api/v1/tasks", json=task, headers={"x-api-key": key})
    ).status_code == 201
    listed = _spool("accounts", "list", "--database-url", database_url)
    line = next(v for v in listed.stdout.splitlines() if v.startswith(account_id))
    assert "quota cli" in line and "grant: command" in line and key not in listed.stdout
    revoked = _spool("accounts", "revoke-grant", account_id, "--database-url", database_url)
    assert revoked.returncode == 0 and "grant: none" in revoked.stdout
    assert (
        await client.post("/api/v1/tasks", json=task, headers={"x-api-key": key})
    ).status_code == 403

    bad = _spool("accounts", "quota", account_id, "--running", "-3", "--database-url", database_url)
    assert bad.returncode != 0 and "--running" in bad.stderr
    unknown = _spool("accounts", "grant", "no-such-account", "--database-url", database_url)
    assert unknown.returncode != 0 and "not found" in unknown.stderr


def _key_row(out: str, name: str) -> list[str]:
    """The cells of `name`'s line in `spool keys list` (cells are two or more spaces apart)."""
    (line,) = [line for line in out.splitlines() if f"  {name}  " in line]
    return re.split(r"\s{2,}", line.strip())


async def test_keys_list_shows_id_name_scope_and_expiry_but_never_a_key(
    database_url: str, store: EventStore
) -> None:
    name = f"lister-{time.time_ns()}"
    made = _spool(
        "keys", "create", "--name", name, "--scope", "read", "--expires", "30d",
        "--database-url", database_url,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    listed = _spool("keys", "list", "--database-url", database_url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "ID", "NAME", "ACCOUNT", "SCOPE", "CREATED", "LAST", "USED", "EXPIRES", "REVOKED",
    ]  # fmt: skip
    row = await store.pool.fetchrow(
        "SELECT key_id, account_id, expires_at FROM api_keys WHERE name = $1", name
    )
    cells = _key_row(listed.stdout, name)
    assert cells[:4] == [row["key_id"], name, row["account_id"], "read"]
    assert cells[5] == "-"  # never used
    assert cells[6] == row["expires_at"].strftime("%Y-%m-%d %H:%M:%SZ") and cells[7] == "no"
    assert key not in listed.stdout and account.hash_key(key) not in listed.stdout


async def test_keys_revoke_stops_a_key_at_once(
    database_url: str, client: httpx.AsyncClient, store: EventStore
) -> None:
    name = f"revoked-{time.time_ns()}"
    key = _spool("keys", "create", "--name", name, "--database-url", database_url)
    key = key.stdout.strip().splitlines()[-1]
    key_id = await store.pool.fetchval("SELECT key_id FROM api_keys WHERE name = $1", name)
    done = _spool("keys", "revoke", key_id, "--database-url", database_url)
    assert (done.returncode, done.stdout.strip()) == (0, f"key {key_id} revoked"), done.stderr
    answer = await client.get("/jobs", headers={"x-api-key": key})
    assert answer.status_code == 401
    again = _spool("keys", "revoke", key_id, "--database-url", database_url)
    assert again.stdout.strip() == f"key {key_id} was already revoked"
    listed = _spool("keys", "list", "--database-url", database_url)
    assert _key_row(listed.stdout, name)[-1] == "yes"


async def test_keys_rotate_prints_a_new_key_and_the_old_one_works_only_through_its_grace(
    database_url: str, client: httpx.AsyncClient, store: EventStore
) -> None:
    keys = {}
    for name in ("graceful", "abrupt"):
        name = f"{name}-{time.time_ns()}"
        made = _spool(
            "keys", "create", "--name", name, "--scope", "jobs", "--database-url", database_url
        )
        key_id = await store.pool.fetchval("SELECT key_id FROM api_keys WHERE name = $1", name)
        keys[name.split("-")[0]] = (made.stdout.strip().splitlines()[-1], key_id)
    old, key_id = keys["graceful"]
    rotated = _spool("keys", "rotate", key_id, "--grace", "600", "--database-url", database_url)
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    assert new.startswith("sk_") and new != old and "600 s" in rotated.stderr
    for key in (old, new):
        assert (await client.get("/jobs", headers={"x-api-key": key})).status_code == 200
    scope = await store.pool.fetchval(
        "SELECT scope FROM api_keys WHERE key_hash = $1", account.hash_key(new)
    )
    assert scope == "jobs"

    old, key_id = keys["abrupt"]
    rotated = _spool("keys", "rotate", key_id, "--database-url", database_url)
    assert rotated.returncode == 0, rotated.stderr
    assert (await client.get("/jobs", headers={"x-api-key": old})).status_code == 401
    new = rotated.stdout.strip()
    assert (await client.get("/jobs", headers={"x-api-key": new})).status_code == 200
    twice = _spool("keys", "rotate", key_id, "--database-url", database_url)
    assert twice.returncode == 1 and "revoked, replaced or has expired" in twice.stderr


async def test_keys_expire_sets_when_a_key_stops_working(
    database_url: str, store: EventStore
) -> None:
    name = f"expiring-{time.time_ns()}"
    _spool("keys", "create", "--name", name, "--database-url", database_url)
    key_id = await store.pool.fetchval("SELECT key_id FROM api_keys WHERE name = $1", name)
    asked = time.time()
    done = _spool("keys", "expire", key_id, "--at", "12h", "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    expires = await store.pool.fetchval("SELECT expires_at FROM api_keys WHERE key_id = $1", key_id)
    assert abs(expires.timestamp() - (asked + 12 * 3600)) < 60
    assert done.stdout.strip() == f"key {key_id} expires at {expires:%Y-%m-%d %H:%M:%S}Z"
    past = _spool("keys", "expire", key_id, "--at", "2001-01-01", "--database-url", database_url)
    assert past.returncode == 2 and "in the past" in past.stderr


def test_bad_key_commands_are_clear_cli_errors(database_url: str) -> None:
    for args, words in (
        (("create", "--name", "x", "--scope", "root"), "unknown scope 'root'"),
        (("create", "--name", "x", "--expires", "2001-01-01T00:00Z"), "in the past"),
        (("create", "--name", "x", "--expires", "soon"), "neither a time"),
        (("create", "--name", "x", "--account", "nobody"), "no account nobody"),
        (("revoke", "0123456789abcdef"), "no key 0123456789abcdef"),
        (("rotate", "0123456789abcdef", "--grace", "-1"), "--grace"),
    ):
        done = _spool("keys", *args, "--database-url", database_url)
        assert done.returncode in (1, 2), (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
        assert "sk_" not in done.stdout


def test_the_first_spool_up_on_a_keyless_database_prints_one_admin_key_once(
    tmp_path: Path, fresh_database_url: str
) -> None:
    """Its digest alone is stored; the key is on stdout, never in the log (stderr)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def up(run: str) -> tuple[str, str]:
        out, err = tmp_path / f"{run}.out", tmp_path / f"{run}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [*SPOOL, "up", "--port", str(port), "--database-url", fresh_database_url,
                 "--data-dir", str(tmp_path / "data"), "--node-id", f"first-key-{run}"],
                cwd=REPO_ROOT, env=child_env(), stdout=stdout, stderr=stderr,
            )  # fmt: skip
            try:
                wait_http(f"{base}/health", 120, proc)
                if run == "first":
                    key = out.read_text().split("    ")[1].split()[0]
                    mine = httpx.get(f"{base}/user/keys", headers={"x-api-key": key})
                    assert mine.status_code == 200, mine.text
                    (listed,) = mine.json()["keys"]
                    assert (listed["scope"], listed["name"]) == ("admin", "first admin key")
                    assert httpx.get(f"{base}/api/v1/config", headers={"x-api-key": key}).is_success
            finally:
                stop_processes(proc, seconds=60)
        return out.read_text(), err.read_text()

    printed, logged = up("first")
    key = printed.split("    ")[1].split()[0]
    assert key.startswith("sk_") and printed.count(key) == 2  # the key, and the curl example
    assert "x-api-key" in printed and "spool keys create" in printed
    assert key not in logged and "made the first admin key" in logged
    printed, logged = up("second")
    assert "sk_" not in printed + logged


async def test_spool_nodes_drains_and_undrains_a_node(
    database_url: str, store: EventStore, runner: ProjectionRunner
) -> None:
    node_id = unique("cli-node")
    await register(store, runner, node_id)
    registered = len(await store.read_stream(node.stream_id(node_id)))

    drained = _spool("nodes", "drain", node_id, "--database-url", database_url)
    assert drained.returncode == 0, drained.stderr
    assert f"{node_id}: draining since" in drained.stdout
    again = _spool("nodes", "drain", node_id, "--database-url", database_url)
    assert again.returncode == 0 and again.stdout == drained.stdout  # twice is once
    await runner.settle("nodes")
    assert (await nodes.gate(store.pool, node_id)).draining
    recorded = (await store.read_stream(node.stream_id(node_id)))[registered:]
    assert [(e.type, e.metadata.actor) for e in recorded] == [("NodeDrainRequested", "cli")]

    undrained = _spool("nodes", "undrain", node_id, "--database-url", database_url)
    assert undrained.returncode == 0, undrained.stderr
    assert undrained.stdout.strip() == f"{node_id}: active, takes new work"
    await runner.settle("nodes")
    assert not (await nodes.gate(store.pool, node_id)).draining

    unknown = _spool("nodes", "drain", unique("no-such-node"), "--database-url", database_url)
    assert unknown.returncode == 1
    assert "not found (never registered, or removed)" in unknown.stderr


async def test_spool_nodes_release_ends_a_quarantine(
    database_url: str, store: EventStore, runner: ProjectionRunner
) -> None:
    node_id = unique("cli-node")
    await register(store, runner, node_id)
    failures = [UnitFailure(unit="job-1:1:mux:1", reason="Internal error: OSError")]
    quarantined = node.NodeQuarantined(node_id=node_id, reason="1 unit failed", failures=failures)
    await append_node(store, runner, node_id, quarantined)

    released = _spool("nodes", "release", node_id, "--database-url", database_url)
    assert released.returncode == 0, released.stderr
    assert released.stdout.strip() == f"{node_id}: active, takes new work"
    [last] = (await store.read_stream(node.stream_id(node_id)))[-1:]
    assert isinstance(last.data, node.NodeReleased)
    assert (last.data.by, last.metadata.actor) == ("admin", "cli")
    await runner.settle("nodes")
    assert (await nodes.gate(store.pool, node_id)).quarantined_since is None

    unknown = _spool("nodes", "release", unique("no-such-node"), "--database-url", database_url)
    assert unknown.returncode == 1
    assert "not found (never registered, or removed)" in unknown.stderr
