"""Hostile input: whatever a client sends, Spool answers 2xx/3xx or a 4xx in its surface's shape.

Schemathesis generates requests for every operation of Spool's own OpenAPI document (served by
the app, fetched over loopback), valid and invalid, with a valid admin key; explicit cases
cover what a fuzzer rarely finds on its own (huge bodies, deep JSON, path tricks, CR/LF).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from spool.adapters.event_store import EventStore
from spool.api.surfaces import Surface, surface_of
from tests.cluster_api_helpers import FreshApi, fresh_api, register
from tests.fixtures.loopback import serve_on_loopback

# Examples per operation: enough to hit every documented parameter with wrong types, bounds and
# missing fields; bounded so that the whole document runs in well under a minute.
EXAMPLES_PER_OPERATION = 20
MEDIA = "https://93.184.216.34/clip.mp4"  # an address literal: no DNS lookup


@dataclass
class Served:
    api: FreshApi
    base_url: str
    ids: dict[str, str]
    """Path parameter name -> the id of something that exists (a job, batch, task, device)."""


async def _things(api: FreshApi) -> dict[str, str]:
    """A job, a batch, a task and a device of the admin's, so generated requests reach them."""
    h = api.admin()
    job = await api.client.post("/jobs", json={"url": MEDIA}, headers=h)
    bulk = await api.client.post("/jobs/bulk", json={"jobs": [{"url": MEDIA}]}, headers=h)
    task = await api.client.post(
        "/api/v1/tasks", json={"task_type": "echo", "payload": {"m": 1}}, headers=h
    )
    for answer in (job, bulk, task):
        assert answer.status_code == 201, answer.text
    await register(api.store, api.runner, "fuzz-node")
    await api.runner.settle()
    return {
        "job_id": job.json()["job_id"],
        "batch_id": bulk.json()["batch_id"],
        "task_id": task.json()["data"]["task_id"],
        "device_id": "fuzz-node",
    }


@pytest.fixture
async def served(fresh_database_url: str, redis_url: str) -> AsyncIterator[Served]:
    """The API over a database of its own (the fuzzer deletes and reconfigures things)."""
    async with (
        fresh_api(fresh_database_url, redis_url) as api,
        serve_on_loopback(api.app, lifespan="off") as port,
    ):
        yield Served(api, f"http://127.0.0.1:{port}", await _things(api))


def surface_error_problem(path: str, status: int, body: Any) -> str | None:
    """Why a 4xx body is not in its surface's documented error shape (None: it is)."""
    if not isinstance(body, dict):
        return f"body is not a JSON object: {body!r:.200}"
    surface = surface_of(path)
    if surface is Surface.CLUSTER:
        need = {"status", "message", "error_code", "timestamp", "request_id"}
        if body.get("status") != "error" or not need <= body.keys():
            return f"not the /api/v1 error envelope: {body!r:.300}"
        return None
    if surface is Surface.MESSAGE:
        return None if isinstance(body.get("message"), str) else f"no message: {body!r:.300}"
    if isinstance(body.get("error"), str):
        return None
    return f"no error: {body!r:.300}"


def _reason(response: requests.Response | httpx.Response) -> str | None:
    try:
        details = response.json().get("error_details") or {}
    except (ValueError, AttributeError):
        return None
    return details.get("reason") if isinstance(details, dict) else None


def check_answer(
    method: str, path: str, response: requests.Response | httpx.Response
) -> str | None:
    """What is wrong with an answer to hostile input, or None."""
    status = response.status_code
    if path == "/health" and status == 503 and response.json().get("status") != "error":
        return None  # the documented answer of a degraded cluster (no scheduler runs here)
    if status == 503 and _reason(response) in ("device_offline", "ping_timeout"):
        return None  # the seed's 503 for pinging a device that is gone or does not answer
    if status >= 500:
        return f"{status}: {response.text[:300]}"
    if 400 <= status < 500 and method != "HEAD":  # a HEAD answer has no body
        try:
            body = response.json()
        except ValueError:
            return f"{status} without a JSON body: {response.text[:200]!r}"
        return surface_error_problem(path, status, body)
    return None


@dataclass
class Fuzzed:
    problems: list[str]
    answered: dict[str, set[int]]
    """Each operation's label and the statuses it answered."""


def _aim(case: Case, ids: dict[str, str]) -> None:
    """Point a generated request at things that exist: real ids, a URL that passes the checks.

    Without this nearly every request stops at "not found" or "Invalid URL"; with it the
    generated options, queries and bodies reach the code behind those checks.
    """
    # A ping of a live device waits for its answer (up to the generated timeout) from a node
    # that does not run here: left to unknown ids.
    real_ids = not case.path.endswith("/ping")
    for name in case.path_parameters or {}:
        if name in ids and real_ids:
            case.path_parameters[name] = ids[name]
    body = case.body
    if case.path == "/jobs" and isinstance(body, dict):
        body["url"] = MEDIA
    elif case.path == "/jobs/bulk" and isinstance(body, dict):
        items = body.get("jobs")
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    item["url"] = MEDIA
    elif case.path == "/api/v1/tasks" and case.method == "POST" and isinstance(body, dict):
        body.setdefault("task_type", "echo")


def fuzz_operation(
    operation: Any,
    served: tuple[str, str, dict[str, str]],
    session: requests.Session,
    found: Fuzzed,
) -> None:
    """Run schemathesis on one operation, valid and invalid data; record what it answered."""
    base_url, key, ids = served
    answered = found.answered[operation.label] = set()
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    # An operation with nothing to make invalid (no parameters) has no negative strategy.
    with contextlib.suppress(Exception):
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=st.one_of(strategies), aimed=st.booleans())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Case, aimed: bool) -> None:
        if aimed:
            _aim(case, ids)
        response = case.call(
            base_url=base_url, session=session, headers={"x-api-key": key}, timeout=15
        )
        answered.add(response.status_code)
        problem = check_answer(case.method, case.path, response)
        if problem is not None:
            found.problems.append(f"{case.method} {case.formatted_path}: {problem}")
        # Every status the document lists for the operation, with a body that fits its schema.
        try:
            case.validate_response(
                response, checks=[status_code_conformance, response_schema_conformance]
            )
        except FailureGroup as group:
            found.problems.extend(
                f"{case.method} {case.path} -> {response.status_code}: {failure.title}: "
                f"{failure.message[:300]}"
                for failure in group.exceptions
            )

    one()


def fuzz(base_url: str, key: str, ids: dict[str, str]) -> Fuzzed:
    """Run schemathesis over every operation of the served document; what it found."""
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")
    found = Fuzzed([], {})
    session = requests.Session()
    for result in schema.get_all_operations():
        fuzz_operation(result.ok(), (base_url, key, ids), session, found)
    return found


async def test_no_generated_request_gets_a_5xx_or_an_undocumented_error_shape(
    served: Served,
) -> None:
    found = await asyncio.to_thread(fuzz, served.base_url, served.api.admin_key, served.ids)
    assert len(found.answered) >= 50, sorted(found.answered)  # every documented operation
    assert all(found.answered.values()), found.answered
    assert found.problems == [], "\n".join(sorted(set(found.problems)))


# -- explicit hostile cases ------------------------------------------------------------------
BIG = 11 * 1024 * 1024  # past the 10 MB request body limit


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def assert_surface_error(path: str, answer: httpx.Response, status: int) -> None:
    """`answer` is `status` in the error shape of `path`'s surface."""
    assert answer.status_code == status, answer.text[:300]
    problem = check_answer(answer.request.method, path, answer)
    assert problem is None, problem


# One POST per surface that takes a JSON body.
BODIES = [
    ("/jobs", "x-api-key"),
    ("/jobs/bulk", "x-api-key"),
    ("/api/v1/tasks", "x-api-key"),
    ("/api/cluster/viewers/events", "x-api-key"),
]


@pytest.mark.parametrize(("path", "header"), BODIES)
async def test_an_oversized_body_is_refused_with_413(
    client: httpx.AsyncClient, admin_key: str, path: str, header: str
) -> None:
    body = b'{"url": "' + b"a" * BIG + b'"}'
    answer = await client.post(
        path, content=body, headers={header: admin_key, "content-type": "application/json"}
    )
    assert_surface_error(path, answer, 413)


@pytest.mark.parametrize(("path", "header"), BODIES)
async def test_deeply_nested_json_is_a_400(
    client: httpx.AsyncClient, admin_key: str, path: str, header: str
) -> None:
    body = '{"url": ' + _deep(100_000) + "}"
    answer = await client.post(
        path, content=body, headers={header: admin_key, "content-type": "application/json"}
    )
    assert_surface_error(path, answer, 400)


HUGE = str(10**30)
PAGING = [
    f"/jobs?limit={HUGE}",
    "/jobs?limit=-1",
    f"/api/v1/tasks?page_size={HUGE}",
    f"/api/v1/tasks?page={HUGE}",
    "/api/v1/tasks?page=1000000000000000000&page_size=100",
    f"/api/v1/devices?page_size={HUGE}",
    "/api/v1/devices?page=1000000000000000000&page_size=100",
    "/api/v1/devices?page=5",  # past the end of an empty list
    "/api/v1/tasks?page=5",
    f"/api/cluster/viewers?rowsPerPage={HUGE}",
    f"/api/cluster/viewers?page={HUGE}",
    "/api/cluster/viewers?page=1000000000000000000&rowsPerPage=100",
]


@pytest.mark.parametrize("url", PAGING)
async def test_huge_paging_numbers_are_a_400_or_an_empty_page(
    client: httpx.AsyncClient, admin_key: str, url: str
) -> None:
    answer = await client.get(url, headers=_auth(admin_key))
    assert answer.status_code in (200, 400), answer.text[:300]
    if answer.status_code == 400:
        assert_surface_error(url.split("?")[0], answer, 400)


@pytest.mark.parametrize("from_version", ["3000000000", HUGE])
async def test_a_version_past_the_int32_range_is_a_400(
    client: httpx.AsyncClient, api_key: str, from_version: str
) -> None:
    job = await client.post("/jobs", json={"url": MEDIA}, headers=_auth(api_key))
    url = f"/jobs/{job.json()['job_id']}/events?from_version={from_version}"
    answer = await client.get(url, headers=_auth(api_key))
    assert_surface_error("/jobs/x/events", answer, 400)


NUL_QUERIES = [
    "/jobs?status=%00",
    "/jobs?cursor=%00",
    "/api/v1/tasks?status=%00",
    "/api/v1/tasks?task_type=%00",
    "/api/v1/devices?status=%00",
    "/api/v1/devices?search=%00",
    "/api/cluster/viewers?search=a%00b",
    "/jobs/%00",
    "/jobs/%00/events",
    "/batch/%00",
    "/api/v1/tasks/%00",
    "/api/v1/devices/%00",
    "/media/%00",
]


@pytest.mark.parametrize("url", NUL_QUERIES)
async def test_nul_bytes_in_queries_and_ids_are_a_4xx(
    client: httpx.AsyncClient, admin_key: str, url: str
) -> None:
    answer = await client.get(url, headers=_auth(admin_key))
    assert answer.status_code < 500, answer.text[:300]
    if answer.status_code >= 400:
        assert_surface_error(url.split("?")[0], answer, answer.status_code)


REFUSED_NAMES = [
    ("filename", "a\x00b"),
    ("filename", "../../etc/passwd"),
    ("filename", "..\\..\\windows"),
    ("filename", "a/b"),
    ("filename", ".."),
    ("folder", "x\x00y"),
    ("folder", "../up"),
    ("folder", "a/../../b"),
    ("folder", "/etc"),
    ("folder", "\\\\server\\share"),
    ("folder", "a\r\nb"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED_NAMES)
async def test_path_tricks_in_filename_and_folder_are_refused(
    client: httpx.AsyncClient, api_key: str, store: EventStore, field: str, value: str
) -> None:
    before = await store.pool.fetchval("SELECT count(*) FROM events")
    answer = await client.post("/jobs", json={"url": MEDIA, field: value}, headers=_auth(api_key))
    assert_surface_error("/jobs", answer, 400)
    bulk = await client.post(
        "/jobs/bulk", json={"jobs": [{"url": MEDIA, field: value}]}, headers=_auth(api_key)
    )
    assert_surface_error("/jobs/bulk", bulk, 400)
    assert await store.pool.fetchval("SELECT count(*) FROM events") == before  # nothing stored


# Accepted, but what is stored is one harmless segment (filename) or plain segments (folder).
SANITISED = [
    ("filename", "\u202egnp.exe", "gnp.exe"),
    ("filename", "\uff21\uff22\uff23", "\uff21\uff22\uff23"),  # fullwidth ABC
    ("filename", "e\u0301te\u0301", "été"),
    ("filename", "CON", "_CON"),
    ("filename", "\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fx", None),  # fullwidth ../../x
    ("filename", "a" * 300, None),
    ("folder", "a//b///c/", "a/b/c"),
    ("folder", "\uff0e\uff0e\uff0f\uff0e\uff0e", None),
    ("folder", "%2e%2e%2fetc", "%2e%2e%2fetc"),
]


@pytest.mark.parametrize(("field", "value", "stored"), SANITISED)
async def test_unicode_tricks_in_names_are_stored_harmless(
    client: httpx.AsyncClient, api_key: str, field: str, value: str, stored: str | None
) -> None:
    answer = await client.post("/jobs", json={"url": MEDIA, field: value}, headers=_auth(api_key))
    if answer.status_code == 400:
        assert_surface_error("/jobs", answer, 400)
        return
    assert answer.status_code == 201, answer.text
    job = (await client.get(f"/jobs/{answer.json()['job_id']}", headers=_auth(api_key))).json()
    kept = json.dumps(job)
    name = job.get(field) or job.get("options", {}).get(field)
    assert name is not None, kept[:500]
    if stored is not None:
        assert name == stored
    parts = name.split("/")
    assert ".." not in parts and not name.startswith("/") and "\\" not in name
    assert all(len(p) <= 255 and p.strip(" .") for p in parts)
    assert "\u202e" not in name


@pytest.mark.parametrize(
    "webhook_url",
    [
        "https://hooks.test/x\r\nX-Injected: 1",
        "https://hooks.test/x\nHost: evil.test",
        "https://hooks.test/%0d%0aX-Injected:%201\r\n",
        "https://hooks.test\r\n/x",
        "https://hooks.test/x\x00",
    ],
)
async def test_header_injection_in_a_webhook_url_is_refused(
    client: httpx.AsyncClient, api_key: str, store: EventStore, webhook_url: str
) -> None:
    before = await store.pool.fetchval("SELECT count(*) FROM events")
    answer = await client.post(
        "/jobs", json={"url": MEDIA, "webhook_url": webhook_url}, headers=_auth(api_key)
    )
    assert_surface_error("/jobs", answer, 400)
    assert await store.pool.fetchval("SELECT count(*) FROM events") == before
