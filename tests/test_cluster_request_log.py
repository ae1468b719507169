"""Request logs: one record per request on `api.requests`, written with the seed's fields."""

from __future__ import annotations

import json
import logging

import httpx

from tests.fixtures.request_log import Lines


async def test_each_request_is_one_json_line(
    client: httpx.AsyncClient, admin_key: str, request_log: Lines
) -> None:
    answer = await client.get(
        "/api/v1/cluster/status", headers={"X-API-Key": admin_key, "X-Request-Id": "req-42"}
    )
    assert answer.status_code == 200
    [line] = [json.loads(x) for x in request_log.lines if "req-42" in x]
    assert set(line) == {
        "timestamp",
        "level",
        "logger",
        "message",
        "request_id",
        "method",
        "path",
        "status_code",
        "duration_ms",
    }
    assert line["level"] == "INFO"
    assert line["logger"] == "api.requests"
    assert line["message"] == "Request processed"
    assert line["request_id"] == "req-42" == answer.json()["request_id"]
    assert line["method"] == "GET"
    assert line["path"] == "/api/v1/cluster/status"
    assert line["status_code"] == 200
    assert line["duration_ms"] >= 0
    assert line["timestamp"].endswith("Z")


async def test_nothing_is_logged_when_the_logger_is_off(
    client: httpx.AsyncClient, api_key: str, request_log: Lines
) -> None:
    logging.getLogger("api.requests").setLevel(logging.WARNING)
    await client.get("/api/v1/devices", headers={"X-API-Key": api_key})
    assert request_log.lines == []
