"""Security: no user reaches another's data, no secret is kept or shown in clear, no token is
forged, no download or webhook aims inside the network.

The URL guard's own cases are in test_ssrf.py, the task executors' in test_tasks_types.py; this
file checks the same rules where a user meets them: through the API, the log and the tables.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from spool.adapters import webhook_client
from spool.adapters.log_format import JsonFormatter, TextFormatter
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.tokens import TokenError, issue_token, signing_key, verify_token
from spool.reactors.task_types import EXECUTORS, TaskContext, TaskRefused
from tests.fixtures.cluster import StartCluster
from tests.fixtures.loopback import serve_on_loopback
from tests.fixtures.s3 import S3Server

MEDIA = "https://93.184.216.34/clip.mp4"  # an address literal: no DNS lookup


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


# -- cross-tenant access ---------------------------------------------------------------------


async def _owned_by(client: httpx.AsyncClient, key: str) -> dict[str, str]:
    """A job, a batch and a task of the account behind `key`."""
    job = await client.post("/jobs", json={"url": MEDIA}, headers=_auth(key))
    assert job.status_code == 201, job.text
    bulk = await client.post(
        "/jobs/bulk",
        json={"jobs": [{"url": MEDIA}, {"url": "https://93.184.216.34/other.mp4"}]},
        headers=_auth(key),
    )
    assert bulk.status_code == 201, bulk.text
    task = await client.post(
        "/api/v1/tasks",
        json={"task_type": "echo", "payload": {"message": "mine"}},
        headers=_auth(key),
    )
    assert task.status_code == 201, task.text
    return {
        "job": job.json()["job_id"],
        "batch": bulk.json()["batch_id"],
        "task": task.json()["data"]["task_id"],
    }


# Every endpoint that takes an id: method, path, body.
BY_ID: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/jobs/{job}", None),
    ("GET", "/jobs/{job}/events", None),
    ("GET", "/jobs/{job}/trace", None),
    ("POST", "/jobs/{job}/retry", None),
    ("DELETE", "/jobs/{job}/file", None),
    ("DELETE", "/jobs/{job}", None),
    ("GET", "/media/{job}", None),
    ("HEAD", "/media/{job}", None),
    ("GET", "/media/{job}/index.m3u8", None),
    ("GET", "/batch/{batch}", None),
    ("PATCH", "/batch/{batch}/jobs", {"renames": [{"job_id": "{job}", "filename": "x"}]}),
    ("POST", "/batch/{batch}/start", None),
    ("DELETE", "/batch/{batch}", None),
    ("GET", "/api/v1/tasks/{task}", None),
    ("GET", "/api/v1/tasks/{task}/status", None),
    ("GET", "/api/v1/tasks/{task}/result", None),
    ("POST", "/api/v1/tasks/{task}/cancel", None),
    ("POST", "/api/v1/tasks/{task}/retry", None),
]


def _filled(body: dict[str, Any] | None, ids: dict[str, str]) -> Any:
    """`body` with its `{job}`-style placeholders filled in."""
    return None if body is None else json.loads(json.dumps(body).replace("{job}", ids["job"]))


def _comparable(answer: httpx.Response, ids: dict[str, str]) -> tuple[int, Any]:
    """Status and body with the ids asked for and per-request fields blanked out."""
    text = answer.text
    for value in ids.values():
        text = text.replace(value, "<id>")
    try:
        body = json.loads(text)
    except ValueError:
        return answer.status_code, text
    if isinstance(body, dict):
        for volatile in ("timestamp", "request_id"):
            body.pop(volatile, None)
    return answer.status_code, body


@pytest.mark.parametrize(("method", "template", "body"), BY_ID)
async def test_another_users_id_answers_exactly_like_an_id_that_does_not_exist(
    client: httpx.AsyncClient,
    api_key: str,
    other_api_key: str,
    method: str,
    template: str,
    body: dict[str, Any] | None,
) -> None:
    mine = await _owned_by(client, api_key)
    nobodys = {k: str(uuid.uuid4()) for k in mine}

    async def ask(ids: dict[str, str], key: str) -> httpx.Response:
        return await client.request(method, template.format(**ids), json=body, headers=_auth(key))

    theirs = await ask(mine, other_api_key)
    missing = await ask(nobodys, other_api_key)
    assert theirs.status_code in (403, 404), theirs.text  # 403: an admin-only command
    assert _comparable(theirs, mine) == _comparable(missing, nobodys)


async def test_another_users_things_are_untouched_and_unlisted(
    client: httpx.AsyncClient, api_key: str, other_api_key: str
) -> None:
    mine = await _owned_by(client, api_key)
    for method, template, body in BY_ID:
        await client.request(
            method, template.format(**mine), json=_filled(body, mine), headers=_auth(other_api_key)
        )
    job = (await client.get(f"/jobs/{mine['job']}", headers=_auth(api_key))).json()
    assert job["status"] == "Pending"  # not cancelled by the other user's DELETE
    batch = await client.get(f"/batch/{mine['batch']}", headers=_auth(api_key))
    assert batch.status_code == 200
    listed = (await client.get("/jobs?limit=100", headers=_auth(other_api_key))).text
    assert mine["job"] not in listed and mine["batch"] not in listed
    tasks = (await client.get("/api/v1/tasks?page_size=100", headers=_auth(other_api_key))).text
    assert mine["task"] not in tasks


# -- webhooks aimed inside the network -------------------------------------------------------


@pytest.mark.parametrize(
    "hook",
    [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00::1]/hook",
        "http://2130706433/hook",
        "http://0177.0.0.1/hook",
        "http://10.0.0.5/hook",
    ],
)
async def test_a_webhook_aimed_inside_the_network_is_refused_at_submission(
    client: httpx.AsyncClient, api_key: str, hook: str
) -> None:
    answer = await client.post(
        "/jobs", json={"url": MEDIA, "webhook_url": hook}, headers=_auth(api_key)
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("webhook_url refused: URL refused: ")
    bulk = await client.post(
        "/jobs/bulk", json={"jobs": [{"url": MEDIA}], "webhook_url": hook}, headers=_auth(api_key)
    )
    assert bulk.status_code == 400, bulk.text
    assert "webhook_url refused" in bulk.json()["error"]


async def test_a_webhook_receiver_cannot_redirect_the_delivery_elsewhere() -> None:
    hits: list[str] = []

    async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        hits.append(scope["path"])
        if scope["path"] == "/hook":
            # Where a redirect would lead: allowed by the guard too, so only "no redirects"
            # keeps the delivery from going there.
            headers = [(b"location", b"/internal-admin"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 307, "headers": headers})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve_on_loopback(receiver, lifespan="off") as port:
        answer, retry = await webhook_client.post(
            f"http://127.0.0.1:{port}/hook",
            b"{}",
            secret="s",
            kind="job.completed",
            guard=UrlGuard(["127.0.0.1/32"]),
        )
    assert hits == ["/hook"]
    assert answer.status_code == 307 and not answer.ok and not retry


def _rebinding_dns(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """`name` answers a public address to its first lookup and 127.0.0.1 to every later one.

    Patched at `socket.getaddrinfo`, under every resolver in the process (the event loop's
    and the HTTP client's alike).
    """
    real = socket.getaddrinfo
    answers: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (name, name.encode()):
            return real(host, port, *args, **kwargs)
        address = "93.184.216.34" if not answers else "127.0.0.1"
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


async def _counting_receiver(hits: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            hits.append(scope["path"])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"inside"})

    return app


async def test_a_webhook_name_that_rebinds_to_loopback_is_refused_before_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hits: list[str] = []
    async with serve_on_loopback(await _counting_receiver(hits), lifespan="off") as port:
        answers = _rebinding_dns(monkeypatch, "rebind.test")
        answer, retry = await webhook_client.post(
            f"http://rebind.test:{port}/hook", b"{}", secret="s", kind="job.completed",
            guard=UrlGuard(),
        )  # fmt: skip
    assert answers[0] == "93.184.216.34" and "127.0.0.1" in answers  # the check, then the rebind
    assert hits == []
    assert answer.reason == "URL refused: rebind.test resolves to 127.0.0.1, a loopback address"
    assert not answer.ok and not retry


async def test_an_http_request_task_whose_name_rebinds_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hits: list[str] = []
    async with serve_on_loopback(await _counting_receiver(hits), lifespan="off") as port:
        _rebinding_dns(monkeypatch, "rebind.test")
        ctx = TaskContext("node-t", Settings(data_dir=tmp_path), UrlGuard(), tmp_path / "work")
        with pytest.raises(TaskRefused, match=r"rebind\.test resolves to 127\.0\.0\.1"):
            await EXECUTORS["http_request"](
                {"url": f"http://rebind.test:{port}/admin", "method": "POST", "body": "x"}, ctx
            )
    assert hits == []


# -- tokens ----------------------------------------------------------------------------------

KEY = signing_key("test-secret-key")


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "k", "acc": "a", "admin": True, "aud": "spool-health", "iat": now,
            "exp": now + 60, **extra}  # fmt: skip


def test_a_token_with_alg_none_is_refused() -> None:
    audience = jwt.decode(
        issue_token(KEY, key_id="k", account_id="a", admin=True, ttl_seconds=60)[0],
        options={"verify_signature": False},
    )["aud"]
    unsigned = jwt.encode(_claims(aud=audience), None, algorithm="none")
    with pytest.raises(TokenError, match="invalid token"):
        verify_token(KEY, unsigned)
    # Also with the signature part of a genuine token glued on.
    genuine = issue_token(KEY, key_id="k", account_id="a", admin=False, ttl_seconds=60)[0]
    with pytest.raises(TokenError):
        verify_token(KEY, unsigned.rstrip(".") + "." + genuine.split(".")[2])


def test_a_token_signed_with_another_key_or_algorithm_is_refused() -> None:
    good = issue_token(KEY, key_id="k", account_id="a", admin=False, ttl_seconds=60)[0]
    audience = jwt.decode(good, options={"verify_signature": False})["aud"]
    wrong_key = issue_token(
        signing_key("guess"), key_id="k", account_id="a", admin=True, ttl_seconds=60
    )[0]
    with pytest.raises(TokenError, match="invalid token signature"):
        verify_token(KEY, wrong_key)
    hs512 = jwt.encode(_claims(aud=audience), KEY, algorithm="HS512")
    with pytest.raises(TokenError, match="invalid token"):
        verify_token(KEY, hs512)
    # The raw server secret is not the signing key.
    raw = jwt.encode(_claims(aud=audience), b"test-secret-key", algorithm="HS256")
    with pytest.raises(TokenError, match="invalid token signature"):
        verify_token(KEY, raw)
    assert verify_token(KEY, good).key_id == "k"


def test_an_expired_token_is_refused() -> None:
    expired, _ = issue_token(
        KEY, key_id="k", account_id="a", admin=True, ttl_seconds=60, now=time.time() - 3600
    )
    with pytest.raises(TokenError, match="token expired"):
        verify_token(KEY, expired)


# -- secrets at rest -------------------------------------------------------------------------


async def _everything_stored(pool: asyncpg.Pool) -> str:
    """Every row of every table (the event log included) as text."""
    tables = await pool.fetch(
        "SELECT quote_ident(table_name) AS t FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    parts = []
    for row in tables:
        rows = await pool.fetch(f"SELECT x::text FROM {row['t']} x")  # names from the catalog
        parts.extend(r[0] for r in rows)
    return "\n".join(parts)


async def test_api_keys_are_stored_only_hashed(
    client: httpx.AsyncClient, pool: asyncpg.Pool, api_key: str
) -> None:
    # The key worked, so the projection has it.
    assert (await client.get("/jobs", headers=_auth(api_key))).status_code == 200
    stored = await _everything_stored(pool)
    secret_part = api_key.removeprefix("sk_")
    assert api_key not in stored
    assert secret_part not in stored
    assert secret_part[:16] not in stored  # not even a prefix long enough to guess from


SECRET = "Very/Secret+Storage-Key-0123456789"
ACCESS = "AKIASECURITYTEST9876"


async def test_storage_secrets_never_appear_in_events_tables_logs_or_answers(
    start_cluster: StartCluster, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = f"sec-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=bucket)
    body = {
        "endpoint": s3_server.endpoint_url,
        "bucket": bucket,
        "region": "us-east-1",
        "access_key": ACCESS,
        "secret_key": SECRET,
    }
    caplog.set_level(logging.DEBUG)
    async with start_cluster(with_node=False) as c:
        answers = [
            await c.client.post("/user/s3", json=body, headers=c.headers()),
            await c.client.get("/user/storage", headers=c.headers()),
            # A failing probe (no such bucket) and a bad body must not echo the secret either.
            await c.client.post(
                "/user/s3", json={**body, "bucket": "no-such-bucket-xyz"}, headers=c.headers()
            ),
            await c.client.post("/user/s3", json={**body, "region": 7}, headers=c.headers()),
            # A job with storage of its own keeps the credentials sealed too.
            await c.client.post(
                "/jobs",
                json={"url": MEDIA, "storage": {"provider": "s3", **body}},
                headers=c.headers(),
            ),
        ]
        assert answers[0].status_code == 201, answers[0].text
        assert answers[2].status_code == 400, answers[2].text
        for answer in answers:
            assert SECRET not in answer.text and ACCESS not in answer.text, answer.text
        stored = await _everything_stored(c.pool)
    assert "StorageConfigured" in stored
    assert SECRET not in stored and ACCESS not in stored
    # Every record as a process writes it, in either format, down to DEBUG (botocore prints
    # each request's headers there).
    logged = "\n".join(
        formatter.format(r)
        for r in caplog.records
        for formatter in (JsonFormatter(), TextFormatter())
    )
    assert SECRET not in logged and ACCESS not in logged
