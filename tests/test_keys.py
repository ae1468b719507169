"""Key lifecycle and scopes: `/user/keys`, 403 outside a key's scope on every surface, expiry,
revocation reaching open websockets, and every change on the account's stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from spool.adapters.event_store import EventStore
from spool.adapters.key_store import issue
from spool.api.auth import VerifiedKeys, lookup
from spool.domain import account
from spool.domain.aggregate import steps
from spool.domain.events import NewEvent
from spool.reactors.projection import ProjectionRunner
from tests.cluster_api_helpers import FreshApi, fresh_api
from tests.fixtures.loopback import serve_on_loopback

MEDIA = "https://93.184.216.34/clip.mp4"
TASK = {"task_type": "echo", "payload": {"message": "hello"}}


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


async def _new_key(
    client: httpx.AsyncClient, runner: ProjectionRunner, by: str, **body: Any
) -> dict[str, Any]:
    """A key made through `POST /user/keys` by the key `by`, usable once the answer is back
    and the projection has it."""
    answer = await client.post("/user/keys", json={"name": "made", **body}, headers=_auth(by))
    assert answer.status_code == 201, answer.text
    await runner.settle("api_keys")
    made: dict[str, Any] = answer.json()
    return made


async def _key_id(client: httpx.AsyncClient, key: str) -> str:
    """The id of `key`, as its own listing tells it (the only key of a fresh account)."""
    listing = await client.get("/user/keys", headers=_auth(key))
    assert listing.status_code == 200, listing.text
    (only,) = listing.json()["keys"]
    key_id: str = only["key_id"]
    return key_id


# -- scopes ----------------------------------------------------------------------------------


async def test_a_read_key_reads_everywhere_and_every_write_is_refused_in_each_surfaces_shape(
    client: httpx.AsyncClient, runner: ProjectionRunner, api_key: str
) -> None:
    reader = (await _new_key(client, runner, api_key, scope="read"))["key"]
    assert (await client.get("/jobs", headers=_auth(reader))).status_code == 200
    assert (await client.get("/api/v1/tasks", headers=_auth(reader))).status_code == 200
    assert (await client.get("/usage", headers=_auth(reader))).status_code == 200

    job = await client.post("/jobs", json={"url": MEDIA}, headers=_auth(reader))
    assert job.status_code == 403
    assert set(job.json()) == {"error"} and "read" in job.json()["error"]

    task = await client.post("/api/v1/tasks", json=TASK, headers=_auth(reader))
    assert task.status_code == 403
    assert task.json()["status"] == "error" and task.json()["error_code"] == "UNAUTHORIZED"

    viewers = await client.get("/api/cluster/viewers", headers=_auth(reader))
    assert viewers.status_code == 403 and set(viewers.json()) == {"message"}

    storage = await client.post(
        "/user/s3",
        json={"bucket": "b", "access_key": "a", "secret_key": "s", "region": "us-east-1"},
        headers=_auth(reader),
    )
    assert storage.status_code == 403 and set(storage.json()) == {"error"}
    made = await client.post("/user/keys", json={"name": "x"}, headers=_auth(reader))
    assert made.status_code == 403 and set(made.json()) == {"error"}
    listed = await client.get("/jobs", headers=_auth(api_key))
    assert listed.json()["jobs"] == []  # nothing was created for the account


async def test_a_jobs_key_submits_jobs_but_no_tasks_and_a_tasks_key_the_reverse(
    client: httpx.AsyncClient, runner: ProjectionRunner, api_key: str
) -> None:
    jobs_key = (await _new_key(client, runner, api_key, scope="jobs"))["key"]
    tasks_key = (await _new_key(client, runner, api_key, scope="tasks"))["key"]

    assert (
        await client.post("/jobs", json={"url": MEDIA}, headers=_auth(jobs_key))
    ).status_code == 201
    refused = await client.post("/api/v1/tasks", json=TASK, headers=_auth(jobs_key))
    assert refused.status_code == 403 and refused.json()["error_code"] == "UNAUTHORIZED"

    assert (
        await client.post("/api/v1/tasks", json=TASK, headers=_auth(tasks_key))
    ).status_code == 201
    refused = await client.post("/jobs", json={"url": MEDIA}, headers=_auth(tasks_key))
    assert refused.status_code == 403 and "jobs" in refused.json()["error"]


async def test_keys_issued_before_scopes_keep_what_they_could_do(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner
) -> None:
    """An `ApiKeyCreated` as written before scopes existed: no scope, `admin` alone."""
    plain = account.KEY_PREFIX + "p" * 40 + str(time.time_ns())
    admin = account.KEY_PREFIX + "a" * 40 + str(time.time_ns())
    for key, is_admin in ((plain, False), (admin, True)):
        owner = f"old-{key[-12:]}"
        old = account.ApiKeyCreated(
            key_id=owner,
            account_id=owner,
            name="from before",
            key_hash=account.hash_key(key),
            hint=account.hint(key),
            admin=is_admin,
        )
        await store.append(account.stream_id(owner), [NewEvent(old)], 0)
    await runner.settle("api_keys")

    assert (
        await client.post("/jobs", json={"url": MEDIA}, headers=_auth(plain))
    ).status_code == 201
    assert (await client.post("/api/v1/tasks", json=TASK, headers=_auth(plain))).status_code == 201
    (listed,) = (await client.get("/user/keys", headers=_auth(plain))).json()["keys"]
    assert listed["scope"] == "jobs,tasks"
    assert (await client.get("/api/v1/config", headers=_auth(plain))).status_code == 403
    assert (await client.get("/api/v1/config", headers=_auth(admin))).status_code == 200


async def test_a_new_key_never_holds_more_scope_than_the_key_that_asks(
    client: httpx.AsyncClient, runner: ProjectionRunner, api_key: str, admin_key: str
) -> None:
    jobs_key = (await _new_key(client, runner, api_key, scope="jobs"))["key"]
    for by, scope in ((jobs_key, "tasks"), (jobs_key, "jobs,tasks"), (api_key, "admin")):
        answer = await client.post(
            "/user/keys", json={"name": "more", "scope": scope}, headers=_auth(by)
        )
        assert answer.status_code == 403, (scope, answer.text)
        assert "cannot create" in answer.json()["error"]
    narrower = await _new_key(client, runner, jobs_key, scope="read")
    assert narrower["scope"] == "read"
    same = await _new_key(client, runner, jobs_key)
    assert same["scope"] == "jobs"  # the default: the asking key's own scope
    made_admin = await _new_key(client, runner, admin_key, scope="admin")
    assert made_admin["scope"] == "admin"
    config = await client.get("/api/v1/config", headers=_auth(made_admin["key"]))
    assert config.status_code == 200


async def test_bad_key_requests_are_clear_4xx_and_change_nothing(
    client: httpx.AsyncClient, runner: ProjectionRunner, api_key: str, other_api_key: str
) -> None:
    before = (await client.get("/user/keys", headers=_auth(api_key))).json()
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    for body, words in (
        ({"name": "x", "scope": "superuser"}, "unknown scope 'superuser'"),
        ({"name": "x", "scope": ""}, "at least one"),
        ({"name": "x", "expires_at": past}, "in the past"),
        ({"name": "x", "expires_at": "2030-01-01T00:00:00"}, "time zone"),
        ({"name": "  "}, "needs a name"),
        ({"name": "x", "expires_at": "soon"}, "expires_at"),
    ):
        answer = await client.post("/user/keys", json=body, headers=_auth(api_key))
        assert answer.status_code == 400, (body, answer.text)
        assert words in answer.json()["error"], answer.json()

    unknown = await client.delete("/user/keys/0123456789abcdef", headers=_auth(api_key))
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
    theirs = await _key_id(client, other_api_key)
    not_mine = await client.delete(f"/user/keys/{theirs}", headers=_auth(api_key))
    assert (not_mine.status_code, not_mine.json()) == (404, {"error": f"No key {theirs}"})
    await runner.settle("api_keys")
    assert (await client.get("/jobs", headers=_auth(other_api_key))).status_code == 200
    assert (await client.get("/user/keys", headers=_auth(api_key))).json() == before


async def test_a_listing_shows_ones_own_keys_and_never_a_key(
    client: httpx.AsyncClient, runner: ProjectionRunner, api_key: str, other_api_key: str
) -> None:
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    made = await _new_key(
        client, runner, api_key, name="ci", scope="jobs", expires_at=expires.isoformat()
    )
    answer = await client.get("/user/keys", headers=_auth(api_key))
    keys = answer.json()["keys"]
    assert len(keys) == 2
    ci = next(k for k in keys if k["key_id"] == made["key_id"])
    assert ci["name"] == "ci" and ci["scope"] == "jobs" and ci["revoked"] is False
    assert datetime.fromisoformat(ci["expires_at"]) == expires
    assert ci["created_at"] and ci["account_id"] == made["account_id"]
    assert api_key not in answer.text and made["key"] not in answer.text
    assert "key_hash" not in answer.text and account.hash_key(api_key) not in answer.text
    other = await _key_id(client, other_api_key)
    assert other not in answer.text


async def test_an_admin_lists_and_revokes_every_accounts_keys(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    runner: ProjectionRunner,
    admin_key: str,
    other_api_key: str,
) -> None:
    theirs = await _key_id(client, other_api_key)
    listing = (await client.get("/user/keys", headers=_auth(admin_key))).json()["keys"]
    assert theirs in {k["key_id"] for k in listing}
    revoked = await client.delete(f"/user/keys/{theirs}", headers=_auth(admin_key))
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    await runner.settle("api_keys")
    assert await lookup(VerifiedKeys(pool), other_api_key) is None


async def test_a_lower_key_cannot_revoke_a_higher_key_of_its_account(
    client: httpx.AsyncClient, runner: ProjectionRunner, api_key: str
) -> None:
    reader = await _new_key(client, runner, api_key, scope="read")
    jobs_key = await _new_key(client, runner, api_key, scope="jobs")
    plain = await _key_id_of_plain(client, api_key)
    refused = await client.delete(f"/user/keys/{plain}", headers=_auth(jobs_key["key"]))
    assert refused.status_code == 403 and "cannot revoke" in refused.json()["error"]
    read_only = await client.delete(f"/user/keys/{reader['key_id']}", headers=_auth(reader["key"]))
    assert read_only.status_code == 403  # a read key writes nothing, not even its own revocation
    done = await client.delete(f"/user/keys/{reader['key_id']}", headers=_auth(jobs_key["key"]))
    assert done.status_code == 200
    assert (await client.get("/jobs", headers=_auth(api_key))).status_code == 200


async def _key_id_of_plain(client: httpx.AsyncClient, key: str) -> str:
    keys = (await client.get("/user/keys", headers=_auth(key))).json()["keys"]
    return str(next(k["key_id"] for k in keys if k["scope"] == "jobs,tasks"))


# -- events ----------------------------------------------------------------------------------


async def test_every_key_change_is_an_event_on_the_account_stream_without_the_key(
    store: EventStore, runner: ProjectionRunner
) -> None:
    from spool.adapters.key_store import revoke, rotate, set_expiry
    from spool.domain.events import Metadata

    first = await issue(store, name="events", scope="jobs")
    expiring = await issue(
        store,
        name="short",
        scope="read",
        account_id=first.account_id,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    rotated = await rotate(
        store, first.account_id, first.key_id, grace=timedelta(seconds=30), meta=Metadata()
    )
    later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    await set_expiry(store, first.account_id, expiring.key_id, later, Metadata())
    await revoke(store, first.account_id, expiring.key_id, Metadata())
    events = await store.read_stream(account.stream_id(first.account_id))
    assert [e.type for e in events] == [
        "ApiKeyCreated",
        "ApiKeyCreated",
        "ApiKeyCreated",
        "ApiKeyRotated",
        "ApiKeyExpirySet",
        "ApiKeyRevoked",
    ]
    created = events[2].data
    assert isinstance(created, account.ApiKeyCreated) and created.scope == "jobs"
    turned = events[3].data
    assert isinstance(turned, account.ApiKeyRotated) and turned.replaced_by == rotated.key_id
    raw = await store.pool.fetchval(
        "SELECT string_agg(data::text || metadata::text, '') FROM events WHERE stream_id = $1",
        account.stream_id(first.account_id),
    )
    for key in (first.key, expiring.key, rotated.key):
        assert key not in raw
    await runner.settle("api_keys")
    rows = {
        r["key_id"]: r
        for r in await store.pool.fetch(
            "SELECT key_id, scope, revoked, replaced_by, expires_at FROM api_keys "
            "WHERE account_id = $1",
            first.account_id,
        )
    }
    assert rows[first.key_id]["replaced_by"] == rotated.key_id
    assert rows[first.key_id]["expires_at"] == turned.retires_at
    assert rows[rotated.key_id]["scope"] == "jobs"
    assert rows[expiring.key_id]["revoked"] is True
    assert rows[expiring.key_id]["expires_at"] == later
    folded = account.fold(steps(events))
    assert {k: (v.scope, v.revoked, v.expires_at) for k, v in folded.items()} == {
        k: (r["scope"], r["revoked"], r["expires_at"]) for k, r in rows.items()
    }


async def test_a_rotated_key_works_until_its_grace_ends_and_the_new_one_at_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool, store: EventStore, runner: ProjectionRunner
) -> None:
    from spool.adapters.key_store import rotate
    from spool.domain.events import Metadata

    old = await issue(store, name="rotating", scope="jobs")
    new = await rotate(
        store, old.account_id, old.key_id, grace=timedelta(seconds=1), meta=Metadata()
    )
    await runner.wait_until("api_keys", new.at)
    assert (await client.get("/jobs", headers=_auth(new.key))).status_code == 200
    fresh = VerifiedKeys(pool)
    assert await lookup(fresh, old.key) is not None  # in its grace
    deadline = time.monotonic() + 5
    while await lookup(VerifiedKeys(pool), old.key) is not None:
        assert time.monotonic() < deadline, "the old key outlived its grace"
        await asyncio.sleep(0.1)
    made = (await client.get("/user/keys", headers=_auth(new.key))).json()["keys"]
    assert {k["key_id"]: k["scope"] for k in made} == {old.key_id: "jobs", new.key_id: "jobs"}


async def test_last_use_is_recorded_at_most_once_a_minute(
    client: httpx.AsyncClient, pool: asyncpg.Pool, api_key: str
) -> None:
    key_id = await _key_id(client, api_key)
    first = await pool.fetchval("SELECT used_at FROM api_key_use WHERE key_id = $1", key_id)
    assert first is not None
    # A cache of its own, as another API process has: it asks the database again.
    assert await lookup(VerifiedKeys(pool), api_key) is not None
    again = await pool.fetchval("SELECT used_at FROM api_key_use WHERE key_id = $1", key_id)
    assert again == first
    listed = (await client.get("/user/keys", headers=_auth(api_key))).json()["keys"][0]
    assert datetime.fromisoformat(listed["last_used_at"]) == first


# -- revocation and expiry on every surface, open websockets included ---------------------------


@pytest.fixture
async def live(fresh_database_url: str, redis_url: str) -> AsyncIterator[tuple[FreshApi, int]]:
    """The API on a real port with its projections running, as `spool up` has them."""
    async with fresh_api(fresh_database_url, redis_url) as api, serve_on_loopback(api.app) as port:
        stop = asyncio.Event()
        running = asyncio.create_task(api.runner.run(stop))
        try:
            yield api, port
        finally:
            stop.set()
            await running


async def _open_sockets(
    api: FreshApi, port: int, key: str
) -> tuple[ClientConnection, ClientConnection]:
    cluster = await websockets.connect(f"ws://127.0.0.1:{port}/ws", additional_headers=_auth(key))
    assert '"connected"' in str(await asyncio.wait_for(cluster.recv(), 10))
    token = await api.client.post("/api/auth/token", headers=_auth(key))
    health = await websockets.connect(f"ws://127.0.0.1:{port}/api/health/ws")
    await health.send(f"auth {token.json()['token']}")
    assert await asyncio.wait_for(health.recv(), 10) == "ok"
    return cluster, health


async def _closed_after(ws: ClientConnection, since: float) -> float:
    """Seconds from `since` until `ws` is closed by the server (messages before are skipped)."""
    with pytest.raises(websockets.exceptions.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 4401
    return time.monotonic() - since


async def _refused_after(api: FreshApi, key: str, since: float) -> float:
    """Seconds from `since` until a request with `key` is refused (asked every 50 ms)."""
    while (await api.client.get("/jobs", headers=_auth(key))).status_code == 200:
        assert time.monotonic() - since < 10, "the key kept working"
        await asyncio.sleep(0.05)
    assert (await api.client.get("/jobs", headers=_auth(key))).status_code == 401
    return time.monotonic() - since


async def test_a_revoked_key_stops_working_within_5_s_on_http_and_both_websockets(
    live: tuple[FreshApi, int],
) -> None:
    api, port = live
    made = (await api.client.post("/user/keys", json={"name": "leaked"}, headers=api.user())).json()
    await api.runner.settle("api_keys")
    key = made["key"]
    assert (await api.client.get("/jobs", headers=_auth(key))).status_code == 200  # now cached
    cluster, health = await _open_sockets(api, port, key)

    answer = await api.client.delete(f"/user/keys/{made['key_id']}", headers=api.user())
    assert answer.status_code == 200
    since = time.monotonic()
    taken = await asyncio.gather(
        _refused_after(api, key, since), _closed_after(cluster, since), _closed_after(health, since)
    )
    assert max(taken) < 5.0, taken  # the projection's lag included
    assert (await api.client.get("/jobs", headers=api.user())).status_code == 200


async def test_an_expired_key_stops_working_on_http_and_both_websockets(
    live: tuple[FreshApi, int],
) -> None:
    api, port = live
    expires = datetime.now(UTC) + timedelta(seconds=3)
    made = (
        await api.client.post(
            "/user/keys",
            json={"name": "short-lived", "expires_at": expires.isoformat()},
            headers=api.user(),
        )
    ).json()
    await api.runner.settle("api_keys")
    key = made["key"]
    assert (await api.client.get("/jobs", headers=_auth(key))).status_code == 200
    cluster, health = await _open_sockets(api, port, key)
    since = time.monotonic() + (expires - datetime.now(UTC)).total_seconds()
    taken = await asyncio.gather(
        _refused_after(api, key, since), _closed_after(cluster, since), _closed_after(health, since)
    )
    assert max(taken) < 5.0, taken
    token = await api.client.post("/api/auth/token", headers=_auth(key))
    assert token.status_code == 401


async def test_a_path_spelled_another_way_does_not_escape_the_keys_scope(
    client: httpx.AsyncClient, pool: asyncpg.Pool, runner: ProjectionRunner, api_key: str
) -> None:
    made = await _new_key(client, runner, api_key, scope="jobs")
    jobs_key = made["key"]
    for path in (
        "/api/v1/tasks",
        "/api/v1/tasks/",
        "//api/v1/tasks",
        "/api/v1//tasks",
        "/api/v1/./tasks",
        "/api/v1/x/../tasks",
        "/api/v1/%74asks",
    ):
        answer = await client.post(path, json=TASK, headers=_auth(jobs_key))
        assert answer.status_code in (403, 404), (path, answer.text)
    submitted = await pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'TaskSubmitted' AND data->>'account_id' = $1",
        made["account_id"],
    )
    assert submitted == 0  # the appends are done before the answers: nothing was submitted


async def test_a_key_that_expires_cannot_make_a_key_that_outlives_it(
    client: httpx.AsyncClient, runner: ProjectionRunner, api_key: str
) -> None:
    ends = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    short = (await _new_key(client, runner, api_key, expires_at=ends.isoformat()))["key"]
    later = (ends + timedelta(days=1)).isoformat()
    refused = await client.post(
        "/user/keys", json={"name": "longer", "expires_at": later}, headers=_auth(short)
    )
    assert refused.status_code == 403 and "outlive" in refused.json()["error"]
    child = await _new_key(client, runner, short)
    assert datetime.fromisoformat(child["expires_at"]) == ends


async def test_a_rotated_out_key_in_its_grace_works_but_manages_no_keys(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner
) -> None:
    from spool.adapters.key_store import rotate
    from spool.domain.events import Metadata

    old = await issue(store, name="leaked", scope="jobs")
    new = await rotate(store, old.account_id, old.key_id, grace=timedelta(hours=1), meta=Metadata())
    await runner.wait_until("api_keys", new.at)
    assert (await client.get("/jobs", headers=_auth(old.key))).status_code == 200
    revoke_new = await client.delete(f"/user/keys/{new.key_id}", headers=_auth(old.key))
    assert revoke_new.status_code == 403 and "rotated out" in revoke_new.json()["error"]
    make = await client.post("/user/keys", json={"name": "spare"}, headers=_auth(old.key))
    assert make.status_code == 403
    assert (await client.get("/jobs", headers=_auth(new.key))).status_code == 200


async def test_an_account_holds_at_most_100_working_keys_and_names_are_bounded(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, api_key: str
) -> None:
    made = await _new_key(client, runner, api_key, scope="jobs")
    for n in range(account.KEYS_PER_ACCOUNT - 2):
        await issue(store, name=f"k{n}", account_id=made["account_id"], scope="read")
    full = await client.post("/user/keys", json={"name": "one more"}, headers=_auth(api_key))
    assert full.status_code == 409 and "revoke one first" in full.json()["error"]
    await client.delete(f"/user/keys/{made['key_id']}", headers=_auth(api_key))
    room = await client.post("/user/keys", json={"name": "x" * 201}, headers=_auth(api_key))
    assert room.status_code == 400 and "200 characters" in room.json()["error"]
    assert (await _new_key(client, runner, api_key, name="y" * 200))["name"] == "y" * 200


async def test_keys_in_a_database_from_before_scopes_keep_their_powers_after_migrating(
    server_url: str,
) -> None:
    from spool.adapters.database import asyncpg_url, create_database, drop_database, migrate

    name = f"spool_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name)
    try:
        await migrate(url, "0011")
        conn = await asyncpg.connect(asyncpg_url(url))
        try:
            for key_id, admin in (("old-admin", True), ("old-plain", False)):
                await conn.execute(
                    "INSERT INTO api_keys (key_hash, key_id, account_id, name, hint, admin, "
                    "created_at) VALUES ($1, $1, $1, 'old', 'sk_…', $2, now())",
                    key_id,
                    admin,
                )
            await migrate(url, "head")
            rows = await conn.fetch("SELECT key_id, scope, expires_at FROM api_keys ORDER BY 1")
        finally:
            await conn.close()
    finally:
        await drop_database(server_url, name)
    assert [tuple(r) for r in rows] == [
        ("old-admin", "admin", None),
        ("old-plain", "jobs,tasks", None),
    ]
