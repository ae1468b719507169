"""One error shape per surface: whatever goes wrong (unknown path, wrong method, body too big or
not JSON, too many requests, unknown field), the answer is in the shape of the surface its path
belongs to, never Litestar's own `{"status_code", "detail"}`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from spool.api.surfaces import Surface, surface_of
from tests.cluster_api_helpers import fresh_api
from tests.test_hostile_input import BIG

JOB = "x" * 36
BIG_BODY = b'{"url": "' + b"a" * BIG + b'"}'
FORM = {"content-type": "multipart/form-data; boundary=x"}


def assert_shape(answer: httpx.Response, status: int, surface: Surface, code: str | None) -> None:
    """`answer` is `status` in `surface`'s error shape (with `code` on `/api/v1`)."""
    assert answer.status_code == status, answer.text[:300]
    body: dict[str, Any] = answer.json()
    assert "status_code" not in body and "detail" not in body, body
    if surface is Surface.CLUSTER:
        assert body["status"] == "error", body
        assert body["error_code"] == code, body
        assert isinstance(body["message"], str) and body["message"], body
        assert body["request_id"] == answer.headers["x-request-id"], body
        assert body["timestamp"].endswith("Z"), body
    elif surface is Surface.MESSAGE:
        assert set(body) == {"message"} and body["message"], body
    else:
        assert isinstance(body.get("error"), str) and body["error"], body


# (method, path, extra request arguments, expected status, expected surface, /api/v1 code)
CASES: list[tuple[str, str, dict[str, Any], int, Surface, str | None]] = [
    # -- unknown paths
    ("GET", "/jobs/x/nothing/here", {}, 404, Surface.JOBS, None),
    ("GET", "/no-such-surface", {}, 404, Surface.JOBS, None),
    ("GET", "/api/nothing", {}, 404, Surface.JOBS, None),
    ("GET", "/api/v1/nothing", {}, 404, Surface.CLUSTER, "NOT_FOUND"),
    ("GET", "/api/v1", {}, 404, Surface.CLUSTER, "NOT_FOUND"),
    ("GET", "/api/v1/tasks/a/b/c", {}, 404, Surface.CLUSTER, "NOT_FOUND"),
    ("GET", "/api/cluster/viewers/nothing", {}, 404, Surface.MESSAGE, None),
    ("GET", "/api/auth/nothing", {}, 404, Surface.MESSAGE, None),
    ("GET", "/dashboard/static/nothing.js", {}, 404, Surface.JOBS, None),
    ("GET", "/schema/nothing.json", {}, 404, Surface.JOBS, None),
    # -- wrong methods
    ("DELETE", "/jobs", {}, 405, Surface.JOBS, None),
    ("PUT", "/usage", {}, 405, Surface.JOBS, None),
    ("POST", "/health", {}, 405, Surface.JOBS, None),
    ("GET", "/ws", {}, 405, Surface.JOBS, None),  # a websocket, asked without an upgrade
    ("DELETE", "/api/v1/tasks", {}, 405, Surface.CLUSTER, "METHOD_NOT_ALLOWED"),
    ("POST", "/api/v1/cluster/status", {}, 405, Surface.CLUSTER, "METHOD_NOT_ALLOWED"),
    ("DELETE", "/api/cluster/viewers", {}, 405, Surface.MESSAGE, None),
    ("GET", "/api/auth/token", {}, 405, Surface.MESSAGE, None),
    # -- bodies past the 10 MB limit
    ("POST", "/jobs", {"content": BIG_BODY}, 413, Surface.JOBS, None),
    (
        "PUT",
        "/api/v1/config/server",
        {"content": BIG_BODY},
        413,
        Surface.CLUSTER,
        "PAYLOAD_TOO_LARGE",
    ),
    ("POST", "/api/cluster/viewers/events", {"content": BIG_BODY}, 413, Surface.MESSAGE, None),
    # -- bodies that are not JSON
    ("POST", "/jobs", {"content": b"--x--", "headers": FORM}, 415, Surface.JOBS, None),
    (
        "POST",
        "/user/keys",
        {"content": b"<k/>", "headers": {"content-type": "application/xml"}},
        415,
        Surface.JOBS,
        None,
    ),
    (
        "POST",
        "/api/v1/tasks",
        {"content": b"--x--", "headers": FORM},
        415,
        Surface.CLUSTER,
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    (
        "POST",
        "/api/cluster/viewers/events",
        {"content": b"--x--", "headers": FORM},
        415,
        Surface.MESSAGE,
        None,
    ),
    ("POST", "/api/auth/token", {"content": b"--x--", "headers": FORM}, 415, Surface.MESSAGE, None),
]


@pytest.mark.parametrize(
    ("method", "path", "extra", "status", "surface", "code"),
    CASES,
    ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES],
)
async def test_an_http_error_on_any_path_answers_in_that_paths_surface_shape(
    client: httpx.AsyncClient,
    admin_key: str,
    method: str,
    path: str,
    extra: dict[str, Any],
    status: int,
    surface: Surface,
    code: str | None,
) -> None:
    headers = {
        "x-api-key": admin_key,
        "content-type": "application/json",
        **extra.get("headers", {}),
    }
    answer = await client.request(method, path, content=extra.get("content"), headers=headers)
    assert surface_of(path) is surface
    assert_shape(answer, status, surface, code)


async def test_a_wrong_method_on_the_cluster_api_says_which_methods_the_path_takes(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    answer = await client.delete("/api/v1/tasks", headers={"x-api-key": admin_key})
    assert_shape(answer, 405, Surface.CLUSTER, "METHOD_NOT_ALLOWED")
    assert {"GET", "POST"} <= set(answer.json()["error_details"]["allowed"])
    assert "DELETE" not in answer.headers["allow"]


async def test_past_the_rate_limit_an_unknown_cluster_path_is_a_429_in_the_envelope(
    fresh_database_url: str, redis_url: str
) -> None:
    async with fresh_api(fresh_database_url, redis_url, rate_limit=2) as api:
        for _ in range(2):
            answer = await api.client.get("/api/v1/nothing", headers=api.user())
            assert_shape(answer, 404, Surface.CLUSTER, "NOT_FOUND")
        answer = await api.client.get("/api/v1/nothing", headers=api.user())
        assert_shape(answer, 429, Surface.CLUSTER, "RATE_LIMIT_EXCEEDED")
        assert int(answer.headers["retry-after"]) >= 1


async def test_a_json_body_sent_without_a_content_type_or_as_curls_form_default_is_still_read(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    # `curl -d '{...}'` names the body a form; the README's examples rely on it being read.
    for content_type in ("application/x-www-form-urlencoded", "application/json; charset=utf-8"):
        answer = await client.post(
            "/api/v1/tasks",
            content=b'{"task_type": "echo", "payload": {"m": 1}}',
            headers={"x-api-key": admin_key, "content-type": content_type},
        )
        assert answer.status_code == 201, answer.text


# -- unknown fields --------------------------------------------------------------------------
MEDIA = "https://93.184.216.34/clip.mp4"  # an address literal: no DNS lookup
S3 = {"bucket": "b", "access_key": "AKIAEXAMPLE", "secret_key": "s"}
SOMEONE = "00000000-0000-4000-8000-000000000000"

# (method, path, a body that is right but for one field, that field's path)
UNKNOWN_FIELDS: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/jobs", {"url": MEDIA, "fromat": "mkv"}, "fromat"),
    ("POST", "/jobs/bulk", {"jobs": [{"url": MEDIA}], "fromat": "mkv"}, "fromat"),
    ("POST", "/jobs/bulk", {"jobs": [{"url": MEDIA, "fromat": "mkv"}]}, "fromat"),
    ("PATCH", f"/batch/{SOMEONE}/jobs", {"renames": [], "fromat": 1}, "fromat"),
    (
        "PATCH",
        f"/batch/{SOMEONE}/jobs",
        {"renames": [{"job_id": "j", "filename": "f", "nmae": "g"}]},
        "nmae",
    ),
    ("POST", "/metadata", {"url": MEDIA, "fromat": 1}, "fromat"),
    ("POST", "/user/keys", {"name": "k", "scoep": "read"}, "scoep"),
    ("POST", "/user/s3", {**S3, "regoin": "us-east-1"}, "regoin"),
    ("POST", "/user/bucket", {**S3, "regoin": "us-east-1"}, "regoin"),
    ("POST", "/user/gcs", {**S3, "regoin": "x"}, "regoin"),
    ("POST", "/user/oss", {**S3, "regoin": "x"}, "regoin"),
    ("POST", "/user/blob", {"container": "c", "sas_tokne": "x"}, "sas_tokne"),
    ("PUT", f"/admin/accounts/{SOMEONE}/quotas", {"max_jobs": 3}, "max_jobs"),
    ("PUT", f"/admin/accounts/{SOMEONE}/grants", {"task_types": [], "evn": []}, "evn"),
    ("POST", "/api/v1/tasks", {"task_type": "echo", "priorty": "high"}, "priorty"),
    ("POST", "/api/v1/tasks", {"task_type": "echo", "requirements": {"gpu": True}}, "gpu"),
    ("PUT", "/api/v1/config/server", {"max_conections": 5}, "max_conections"),
    ("PUT", "/api/v1/config/heartbeat", {"timout": 60}, "timout"),
    ("POST", "/api/cluster/viewers/events", {"events": [], "evnets": []}, "evnets"),
    ("POST", "/api/cluster/viewers/events", {"events": [{"type": "connect", "bogus": 1}]}, "bogus"),
    ("POST", f"/jobs/{SOMEONE}/retry", {"force": True}, "force"),
    # Routes that read no body: every field is unknown, and none is silently ignored.
    ("DELETE", f"/jobs/{SOMEONE}", {"keep_file": True}, "keep_file"),
    ("POST", f"/batch/{SOMEONE}/start", {"paused": False}, "paused"),
    ("DELETE", f"/user/keys/{SOMEONE}", {"reason": "lost"}, "reason"),
    ("POST", f"/api/v1/tasks/{SOMEONE}/cancel", {"reason": "x"}, "reason"),
    ("POST", "/api/v1/config/reset", {"server": {}}, "server"),
    ("POST", "/api/v1/devices/nowhere/ping", {"timeout": 1}, "timeout"),
    ("POST", "/api/auth/token", {"ttl": 5}, "ttl"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    UNKNOWN_FIELDS,
    ids=[f"{c[0]} {c[1]} {c[3]}" for c in UNKNOWN_FIELDS],
)
async def test_an_unknown_field_in_any_json_body_is_a_400_naming_it(
    client: httpx.AsyncClient,
    admin_key: str,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    answer = await client.request(method, path, json=body, headers={"x-api-key": admin_key})
    surface = surface_of(path)
    assert_shape(answer, 400, surface, "VALIDATION_ERROR")
    said = answer.json()
    text = {Surface.JOBS: "error", Surface.MESSAGE: "message"}.get(surface, "message")
    assert field in said[text], said
    if surface is Surface.CLUSTER:
        assert said["error_details"]["field"].split(".")[-1] == field, said


# (method, path, the field its body must hold)
REQUIRED_FIELDS: list[tuple[str, str, str]] = [
    ("POST", "/jobs", "url"),
    ("POST", "/jobs/bulk", "jobs"),
    ("POST", "/metadata", "url"),
    ("PATCH", f"/batch/{SOMEONE}/jobs", "renames"),
    ("POST", "/user/keys", "name"),
    ("POST", "/user/s3", "bucket"),
    ("POST", "/api/v1/tasks", "task_type"),
    ("POST", "/api/cluster/viewers/events", "events"),
]
NOT_AN_OBJECT = {"empty": b"", "not JSON": b"url=https://a.example/x.mp4", "an array": b"[1]"}


@pytest.mark.parametrize(
    ("method", "path", "field"), REQUIRED_FIELDS, ids=[f"{c[0]} {c[1]}" for c in REQUIRED_FIELDS]
)
@pytest.mark.parametrize("body", list(NOT_AN_OBJECT.values()), ids=list(NOT_AN_OBJECT))
async def test_an_empty_or_non_json_body_is_a_400_naming_the_required_field_not_data(
    client: httpx.AsyncClient, admin_key: str, method: str, path: str, field: str, body: bytes
) -> None:
    for sent in (body, b"{}"):
        answer = await client.request(
            method,
            path,
            content=sent,
            headers={"x-api-key": admin_key, "content-type": "application/json"},
        )
        surface = surface_of(path)
        assert_shape(answer, 400, surface, "VALIDATION_ERROR")
        said = answer.json()
        text = said["error"] if surface is Surface.JOBS else said["message"]
        assert f"`{field}`" in text, said
        assert "data" not in text, said
        if surface is Surface.CLUSTER:
            assert said["error_details"]["field"] == field, said


async def test_a_route_that_reads_no_body_takes_an_empty_one_or_an_empty_object(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    for body in (b"", b"{}", b" {} "):
        answer = await client.post(
            "/api/auth/token",
            content=body,
            headers={"x-api-key": admin_key, "content-type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["token"]


async def test_a_route_that_reads_no_body_refuses_one_that_is_not_an_object(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    answer = await client.post(
        "/api/v1/config/reset",
        content=b"[1]",
        headers={"x-api-key": admin_key, "content-type": "application/json"},
    )
    assert_shape(answer, 400, Surface.CLUSTER, "VALIDATION_ERROR")
    assert answer.json()["message"] == "This request takes no body"


# -- the OpenAPI document --------------------------------------------------------------------
def _error_schema(doc: dict[str, Any], path: str, method: str, status: int) -> str:
    answer = doc["paths"][path][method]["responses"][str(status)]
    ref: str = answer["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


async def test_the_openapi_document_lists_each_routes_4xx_in_its_surfaces_shape(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    for path, method, schema in [
        ("/jobs/{job_id}", "get", "JobApiError"),
        ("/api/v1/tasks/{task_id}", "get", "ClusterApiError"),
        ("/api/v1/devices/{device_id}", "delete", "ClusterApiError"),
        ("/api/cluster/viewers/events", "post", "MessageError"),
    ]:
        for status in (400, 401, 403):
            assert _error_schema(doc, path, method, status) == schema, (path, status)
    for path, method in [("/jobs/{job_id}", "get"), ("/api/v1/tasks/{task_id}", "get")]:
        assert _error_schema(doc, path, method, 404) in ("JobApiError", "ClusterApiError")
    assert _error_schema(doc, "/jobs", "post", 415) == "JobApiError"
    assert _error_schema(doc, "/api/v1/tasks", "get", 429) == "ClusterApiError"
    envelope = doc["components"]["schemas"]["ClusterApiError"]
    assert "METHOD_NOT_ALLOWED" in envelope["properties"]["error_code"]["enum"]
    # No operation documents Litestar's own error body, which no surface answers.
    for item in doc["paths"].values():
        for operation in item.values():
            for answer in operation.get("responses", {}).values():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                assert "status_code" not in schema.get("properties", {}), answer


async def test_the_openapi_document_gives_cluster_api_tasks_devices_and_status_real_schemas(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    answer = doc["paths"]["/api/v1/tasks/{task_id}"]["get"]["responses"]["200"]
    envelope = schemas[answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]]
    data = schemas[envelope["properties"]["data"]["$ref"].rsplit("/", 1)[-1]]
    assert {"task_id", "task_type", "status", "priority"} <= set(data["properties"])
    listed = doc["paths"]["/api/v1/devices"]["get"]["responses"]["200"]
    ref = listed["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert schemas[ref]["properties"]["data"]["type"] == "array"
    status = doc["paths"]["/api/v1/cluster/status"]["get"]["responses"]["200"]
    ref = status["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    data = schemas[schemas[ref]["properties"]["data"]["$ref"].rsplit("/", 1)[-1]]
    info = schemas[data["properties"]["server_info"]["$ref"].rsplit("/", 1)[-1]]
    assert set(info["properties"]) == {"version", "uptime", "host", "port"}


def _component(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its `$ref` (if any) followed into `components/schemas`."""
    ref = schema.get("$ref")
    return schemas[ref.rsplit("/", 1)[-1]] if ref else schema


CLUSTER_API_DATA_FIELDS: dict[tuple[str, str], set[str]] = {
    ("/api/v1/cluster/metrics", "get"): {"current", "windows"},
    ("/api/v1/cluster/config", "get"): {"server", "heartbeat", "version", "settings"},
    ("/api/v1/devices/summary", "get"): {"total_devices", "by_status", "by_tag", "active_work"},
    ("/api/v1/devices/{device_id}", "get"): {"device_id", "hostname", "concurrency"},
    ("/api/v1/devices/{device_id}", "delete"): {"device_id", "removed", "position"},
    ("/api/v1/devices/{device_id}/status", "get"): {"health", "current", "usage"},
    ("/api/v1/devices/{device_id}/ping", "post"): {"reachable", "latency_ms", "answered_by"},
    ("/api/v1/tasks/statistics", "get"): {"total_tasks", "by_status", "by_type"},
    ("/api/v1/tasks/types", "get"): {"task_types", "known_task_types", "by_type"},
    ("/api/v1/config", "get"): {"server", "heartbeat", "version"},
    ("/api/v1/config/reset", "post"): {"server", "heartbeat", "version"},
    ("/api/v1/config/server", "get"): {"max_connections"},
    ("/api/v1/config/server", "put"): {"max_connections"},
    ("/api/v1/config/heartbeat", "get"): {"interval", "timeout", "max_missed"},
    ("/api/v1/config/heartbeat", "put"): {"interval", "timeout", "max_missed"},
}


async def test_every_cluster_api_answer_names_the_fields_its_data_holds(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    untyped = []
    for path, operations in doc["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, operation in operations.items():
            answers = [a for s, a in operation.get("responses", {}).items() if s.startswith("2")]
            for answer in answers:
                envelope = _component(schemas, answer["content"]["application/json"]["schema"])
                data = _component(schemas, envelope["properties"]["data"])
                if data.get("type") == "array":
                    data = _component(schemas, data["items"])
                if "properties" not in data:
                    untyped.append(f"{method.upper()} {path}")
    assert untyped == []
    for (path, method), fields in CLUSTER_API_DATA_FIELDS.items():
        answer = doc["paths"][path][method]["responses"]
        ok = next(a for s, a in answer.items() if s.startswith("2"))
        envelope = _component(schemas, ok["content"]["application/json"]["schema"])
        data = _component(schemas, envelope["properties"]["data"])
        assert fields <= set(data["properties"]), (path, method)
