"""`GET /api/cluster/viewers` (seed 001) and `POST /api/cluster/viewers/events`.

Each test that writes gets a database of its own, so totals are exact: the list counts every live
viewer. The read-only tests (filters over one fixed set of viewers, refused queries and batches)
share one database of the module's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from spool.adapters.read_models.viewers import ViewerQuery, list_viewers
from tests.cluster_api_helpers import FreshApi, fresh_api

VIEWERS = "/api/cluster/viewers"
EVENTS = "/api/cluster/viewers/events"

SEED_FIELDS = {
    "id",
    "state",
    "harnessType",
    "applicationId",
    "streamKey",
    "remoteAddress",
    "deviceType",
    "osName",
    "browserName",
    "countryCode",
    "countryName",
    "startTime",
    "duration",
    "inBandwidth",
    "outBandwidth",
    "inTotalBytes",
    "outTotalBytes",
    "healthScore",
    "healthGrade",
}

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


@pytest.fixture
async def api(fresh_database_url: str, redis_url: str) -> AsyncIterator[FreshApi]:
    async with fresh_api(fresh_database_url, redis_url) as a:
        yield a


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def connect(n: int, **fields: Any) -> dict[str, Any]:
    """A connect item for viewer `v<n>`, started n seconds after a fixed time."""
    return {
        "type": "connect",
        "id": f"v{n:04d}",
        "harnessType": "STORM_MSE_VIEWER",
        "state": "PLAYING",
        "startTime": 1_770_000_000_000 + n * 1000,
        **fields,
    }


async def post(api: FreshApi, events: list[dict[str, Any]]) -> httpx.Response:
    return await api.client.post(EVENTS, json={"events": events}, headers=bearer(api.admin_key))


async def report(api: FreshApi, events: list[dict[str, Any]]) -> list[str]:
    """Post `events` (must succeed) and wait until the list shows them."""
    r = await post(api, events)
    assert r.status_code == 200, r.text
    await api.runner.settle("viewers")
    ids: list[str] = r.json()["ids"]
    return ids


async def viewers(api: FreshApi, **params: Any) -> dict[str, Any]:
    r = await api.client.get(VIEWERS, params=params, headers=bearer(api.admin_key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def ids_of(body: dict[str, Any]) -> list[str]:
    return [v["id"] for v in body["data"]["list"]]


# -- pagination ----------------------------------------------------------------------------


async def test_no_viewers_gives_zero_items_zero_pages_and_an_empty_list(api: FreshApi) -> None:
    body = await viewers(api)
    assert body["data"] == {
        "totalItems": 0,
        "itemsPerPage": 10,
        "totalPages": 0,
        "currentPage": 1,
        "hasPrevious": False,
        "hasNext": False,
        "list": [],
    }
    assert isinstance(body["meta"]["executionTime"], int)
    assert abs(body["meta"]["generatedAt"] - time.time() * 1000) < 10_000


async def test_exactly_one_full_page_has_no_next_and_no_previous(api: FreshApi) -> None:
    await report(api, [connect(n) for n in range(10)])
    data = (await viewers(api))["data"]
    assert (data["totalItems"], data["totalPages"], len(data["list"])) == (10, 1, 10)
    assert (data["hasPrevious"], data["hasNext"]) == (False, False)


async def test_one_more_than_a_page_makes_a_last_page_of_one(api: FreshApi) -> None:
    await report(api, [connect(n) for n in range(11)])
    first = (await viewers(api))["data"]
    assert (first["totalItems"], first["totalPages"]) == (11, 2)
    assert (first["hasPrevious"], first["hasNext"]) == (False, True)
    last = (await viewers(api, page=2))["data"]
    assert last["currentPage"] == 2
    assert [v["id"] for v in last["list"]] == ["v0000"]  # the oldest, newest-first order
    assert (last["hasPrevious"], last["hasNext"]) == (True, False)


async def test_page_past_the_end_is_empty_but_counts_stay_exact(api: FreshApi) -> None:
    await report(api, [connect(n) for n in range(7)])
    data = (await viewers(api, page=5, rowsPerPage=3))["data"]
    assert data["list"] == []
    assert (data["totalItems"], data["totalPages"], data["itemsPerPage"]) == (7, 3, 3)
    assert (data["currentPage"], data["hasPrevious"], data["hasNext"]) == (5, True, False)


async def test_every_page_read_in_turn_gives_each_viewer_once_newest_first(api: FreshApi) -> None:
    # 23 viewers in pages of 5: later pages are read from the oldest end, the order must hold.
    await report(api, [connect(n) for n in range(23)])
    seen: list[str] = []
    for page in range(1, 6):
        data = (await viewers(api, page=page, rowsPerPage=5))["data"]
        assert data["hasNext"] == (page < 5)
        seen += [v["id"] for v in data["list"]]
    assert seen == [f"v{n:04d}" for n in reversed(range(23))]


async def test_viewers_that_started_together_are_ordered_by_id(api: FreshApi) -> None:
    same = 1_770_000_000_000
    await report(api, [connect(n, startTime=same) for n in (3, 1, 2)])
    assert ids_of(await viewers(api)) == ["v0001", "v0002", "v0003"]


async def test_a_viewer_shows_every_seed_field_with_duration_since_its_start(
    api: FreshApi,
) -> None:
    started = int(time.time() * 1000) - 57_000
    await report(
        api,
        [
            connect(
                1,
                startTime=started,
                state="PUBLISHED",
                applicationId="c_y7q39097ml5glmh6",
                streamKey="123",
                remoteAddress="83.11.198.11",
                userAgent=CHROME_WINDOWS,
                countryCode="PL",
                countryName="Poland",
            )
        ],
    )
    (v,) = (await viewers(api))["data"]["list"]
    assert set(v) == SEED_FIELDS
    assert v["id"] == "v0001"
    assert (v["deviceType"], v["osName"], v["browserName"]) == (
        "DESKTOP",
        "Windows 10/11",
        "Chrome",
    )
    assert (v["countryCode"], v["countryName"]) == ("PL", "Poland")
    assert v["startTime"] == started
    assert 57_000 <= v["duration"] < 67_000
    assert (v["healthScore"], v["healthGrade"]) == (0, "No Data")


# -- filters and search --------------------------------------------------------------------


@pytest.fixture(scope="module")
async def mixed(module_api: FreshApi) -> FreshApi:
    """Nine viewers: three harness types (two of them system), two countries, two keys."""
    api = module_api
    await report(
        api,
        [
            connect(1, streamKey="Match-1", countryCode="PL", countryName="Poland",
                    remoteAddress="83.11.198.11"),
            connect(2, streamKey="match-1", countryCode="PL", countryName="Poland",
                    remoteAddress="83.11.198.12"),
            connect(3, streamKey="other", countryCode="DE", countryName="Germany",
                    remoteAddress="10.0.0.3"),
            connect(4, harnessType="RTMP_PUSH", state="PUBLISHED", streamKey="match-1",
                    countryCode="DE", countryName="Germany", remoteAddress="10.0.0.4"),
            connect(5, harnessType="RTMP_PUSH", state="PUBLISHED", streamKey="other"),
            connect(6, harnessType="TRANSCODER", streamKey="match-1", remoteAddress="10.0.0.6"),
            connect(7, harnessType="TRANSCODER", streamKey="other"),
            connect(8, harnessType="FILE_WRITER", streamKey="match-1"),
            connect(9, harnessType="GENERIC_PROGRESSIVE_VIEWER", streamKey="other",
                    countryCode="PL", countryName="Poland"),
        ],
    )  # fmt: skip
    return api


def numbers(body: dict[str, Any]) -> list[int]:
    """The viewer numbers of a page, and its total must count them all."""
    assert body["data"]["totalItems"] == len(body["data"]["list"]), body["data"]
    return sorted(int(i[1:]) for i in ids_of(body))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ({"systemClients": "true"}, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ({"systemClients": "false"}, [1, 2, 3, 4, 5, 9]),
        ({"harnessType": "RTMP_PUSH"}, [4, 5]),
        ({"harnessType": "TRANSCODER"}, [6, 7]),
        ({"harnessType": "TRANSCODER", "systemClients": "true"}, [6, 7]),
        ({"harnessType": "TRANSCODER", "systemClients": "false"}, []),
        ({"harnessType": "RTMP_PUSH", "systemClients": "false"}, [4, 5]),
        ({"harnessType": "RTMP_VIEWER"}, []),
        ({"search": "match-1"}, [1, 2, 4, 6, 8]),
        ({"search": "MATCH-1"}, [1, 2, 4, 6, 8]),
        ({"search": "match-1", "systemClients": "false"}, [1, 2, 4]),
        ({"search": "match-1", "systemClients": "true"}, [1, 2, 4, 6, 8]),
        ({"search": "match-1", "harnessType": "TRANSCODER"}, [6]),
        ({"search": "match-1", "harnessType": "FILE_WRITER", "systemClients": "false"}, []),
        ({"search": "pl"}, [1, 2, 9]),
        ({"search": "Germany"}, [3, 4]),
        ({"search": "germany", "harnessType": "RTMP_PUSH"}, [4]),
        ({"search": "83.11.198.12"}, [2]),
        ({"search": "10.0.0.6", "systemClients": "false"}, []),
        ({"search": "v0007"}, [7]),
        ({"search": "V0007"}, [7]),
        ({"search": "  match-1  "}, [1, 2, 4, 6, 8]),
        ({"search": "match"}, []),  # exact, not a prefix
        ({"search": "nobody"}, []),
    ],
)
async def test_filters_and_search_select_exactly_the_matching_viewers(
    mixed: FreshApi, params: dict[str, str], expected: list[int]
) -> None:
    assert numbers(await viewers(mixed, rowsPerPage=100, **params)) == expected


async def test_filtered_pages_count_only_the_matches(mixed: FreshApi) -> None:
    data = (await viewers(mixed, search="match-1", rowsPerPage=2, page=3))["data"]
    assert (data["totalItems"], data["totalPages"], data["hasNext"]) == (5, 3, False)
    assert [v["id"] for v in data["list"]] == ["v0001"]


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "two"}, "page"),
        ({"rowsPerPage": "0"}, "rowsPerPage"),
        ({"rowsPerPage": "101"}, "rowsPerPage"),
        ({"rowsPerPage": "ten"}, "rowsPerPage"),
        ({"harnessType": "storm_mse_viewer"}, "harnessType"),
        ({"harnessType": "BOGUS"}, "harnessType"),
        ({"systemClients": "yes"}, "systemClients"),
        ({"systemClients": "1"}, "systemClients"),
        ({"search": "x" * 257}, "search"),
    ],
)
async def test_a_bad_query_parameter_is_a_400_naming_it(
    module_api: FreshApi, params: dict[str, str], named: str
) -> None:
    api = module_api
    r = await api.client.get(VIEWERS, params=params, headers=bearer(api.admin_key))
    assert r.status_code == 400
    assert set(r.json()) == {"message"}
    assert named in r.json()["message"]


async def test_no_key_or_a_wrong_key_is_a_401(api: FreshApi) -> None:
    for headers in ({}, bearer("sk_not_a_key"), {"Authorization": "Basic abc"}):
        r = await api.client.get(VIEWERS, headers=headers)
        assert r.status_code == 401
        assert set(r.json()) == {"message"}


async def test_a_non_admin_key_is_a_403_because_the_list_shows_every_clients_address(
    api: FreshApi,
) -> None:
    r = await api.client.get(VIEWERS, headers=bearer(api.key))
    assert r.status_code == 403
    assert "admin" in r.json()["message"]
    r = await api.client.post(EVENTS, json={"events": [connect(1)]}, headers=bearer(api.key))
    assert r.status_code == 403
    r = await api.client.post(EVENTS, json={"events": [connect(1)]})
    assert r.status_code == 401


# -- the events API ------------------------------------------------------------------------


async def test_connect_stats_state_and_disconnect_move_the_list(api: FreshApi) -> None:
    (made,) = await report(
        api,
        [
            {
                "type": "connect",
                "harnessType": "GENERIC_HLS_VIEWER",
                "state": "PLAYING",
                "streamKey": "live",
                "userAgent": CHROME_WINDOWS,
                "remoteAddress": "83.11.198.11",
                "bitrate": 1_000_000,
            }
        ],
    )
    assert made.startswith("v_") and len(made) == 18
    (v,) = (await viewers(api))["data"]["list"]
    assert (v["id"], v["browserName"], v["healthGrade"]) == (made, "Chrome", "No Data")
    assert v["countryCode"] == ""  # no GeoIP database configured: never invented

    stats = {"type": "stats", "id": made, "inBandwidth": 63, "outBandwidth": 125_000,
             "inTotalBytes": 4083, "outTotalBytes": 26_007_754}  # fmt: skip
    await report(api, [stats, {"type": "state", "id": made, "state": "PAUSED"}])
    (v,) = (await viewers(api))["data"]["list"]
    assert (v["inBandwidth"], v["outBandwidth"]) == (63, 125_000)
    assert (v["inTotalBytes"], v["outTotalBytes"]) == (4083, 26_007_754)
    assert (v["healthScore"], v["healthGrade"], v["state"]) == (100, "Very Good", "PAUSED")

    half = {**stats, "outBandwidth": 62_500, "outTotalBytes": 27_000_000}
    await report(api, [half])
    (v,) = (await viewers(api))["data"]["list"]
    assert (v["healthScore"], v["healthGrade"]) == (50, "Fair")

    await report(api, [{"type": "disconnect", "id": made}])
    assert (await viewers(api))["data"]["totalItems"] == 0
    last = (await api.store.read_stream(f"viewer-{made}"))[-1].data
    assert (last.in_total_bytes, last.out_total_bytes) == (4083, 27_000_000)  # type: ignore[attr-defined]


async def test_explicit_client_facts_win_over_the_user_agent(api: FreshApi) -> None:
    await report(
        api,
        [connect(1, userAgent=CHROME_WINDOWS, deviceType="TABLET", browserName="Kiosk")],
    )
    (v,) = (await viewers(api))["data"]["list"]
    assert (v["deviceType"], v["osName"], v["browserName"]) == ("TABLET", "Windows 10/11", "Kiosk")


async def test_one_bad_event_rejects_the_whole_batch_and_names_index_and_field(
    api: FreshApi,
) -> None:
    r = await post(api, [connect(1), connect(2, harnessType="NOPE")])
    assert r.status_code == 400
    assert "events[1]" in r.json()["message"] and "harnessType" in r.json()["message"]
    assert await api.store.stream_version("viewer-v0001") == 0


@pytest.mark.parametrize(
    ("events", "named"),
    [
        ([{"type": "connect", "state": "PLAYING"}], "harnessType"),
        ([{"type": "warp", "id": "x"}], "events[0]"),
        ([{"type": "stats", "id": "x", "inBandwidth": "fast"}], "inBandwidth"),
        ([connect(1, colour="red")], "colour"),
        ([connect(1, state="playing")], "state"),
        ([connect(1, countryCode="Poland")], "countryCode"),
        ([connect(1, id="has space")], "id"),
        ([], "events"),
        ([connect(n) for n in range(1001)], "1000"),
    ],
)
async def test_a_malformed_batch_is_a_400_naming_what_is_wrong(
    module_api: FreshApi, events: list[dict[str, Any]], named: str
) -> None:
    r = await post(module_api, events)
    assert r.status_code == 400, r.text
    assert named in r.json()["message"]


async def test_a_body_that_is_not_json_is_a_400(api: FreshApi) -> None:
    r = await api.client.post(EVENTS, content=b"{nope", headers=bearer(api.admin_key))
    assert r.status_code == 400
    assert set(r.json()) == {"message"}


async def test_totals_that_go_down_are_refused(api: FreshApi) -> None:
    await report(api, [connect(1)])
    up = {"type": "stats", "id": "v0001", "inBandwidth": 0, "outBandwidth": 10,
          "inTotalBytes": 0, "outTotalBytes": 100}  # fmt: skip
    await report(api, [up])
    r = await post(api, [{**up, "outTotalBytes": 50}])
    assert r.status_code == 400 and "never go down" in r.json()["message"]


async def test_unknown_viewer_is_404_closed_viewer_and_second_connect_are_409(
    api: FreshApi,
) -> None:
    r = await post(api, [{"type": "state", "id": "v_nobody", "state": "PAUSED"}])
    assert r.status_code == 404 and "events[0]" in r.json()["message"]
    await report(api, [connect(1)])
    r = await post(api, [connect(1)])
    assert r.status_code == 409
    await report(api, [{"type": "disconnect", "id": "v0001"}])
    r = await post(api, [{"type": "state", "id": "v0001", "state": "PAUSED"}])
    assert r.status_code == 409
    r = await post(api, [{"type": "disconnect", "id": "v0001"}])
    assert r.status_code == 409


async def test_one_batch_may_open_report_and_close_a_viewer(api: FreshApi) -> None:
    ids = await report(
        api,
        [
            connect(1),
            {"type": "stats", "id": "v0001", "inBandwidth": 1, "outBandwidth": 2,
             "inTotalBytes": 3, "outTotalBytes": 4},
            connect(2),
            {"type": "disconnect", "id": "v0001"},
        ],
    )  # fmt: skip
    assert ids == ["v0001", "v0001", "v0002", "v0001"]
    assert ids_of(await viewers(api)) == ["v0002"]
    assert await api.store.stream_version("viewer-v0001") == 3


# -- deep pages ----------------------------------------------------------------------------


async def test_deep_pages_found_through_start_time_spans_match_skipping_row_by_row(
    api: FreshApi,
) -> None:
    # 120 viewers over five hours, several to a minute and some sharing a start: every page of
    # every filter shape, located through the hour and minute counts, equals plain skipping.
    base = 1_770_000_000_000
    kinds = ["STORM_MSE_VIEWER", "TRANSCODER", "RTMP_PUSH", "FILE_WRITER"]
    await report(
        api,
        [
            connect(
                n,
                startTime=base + (n % 37) * 9 * 60_000 + (n % 3) * 7_000,
                harnessType=kinds[n % 4],
                streamKey=f"key-{n % 2}",
            )
            for n in range(120)
        ],
    )
    queries = [
        ViewerQuery(rows_per_page=7),
        ViewerQuery(rows_per_page=7, system_clients=False),
        ViewerQuery(rows_per_page=5, harness_type="RTMP_PUSH"),
        ViewerQuery(rows_per_page=4, search="key-1"),
        ViewerQuery(rows_per_page=3, search="key-0", system_clients=False),
    ]
    for q in queries:
        pages = 0
        while True:
            pages += 1
            page = q._replace(page=pages)
            plain = await list_viewers(api.pool, page, direct_offset=10**9)
            located = await list_viewers(api.pool, page, direct_offset=0)
            assert located.total == plain.total
            assert [r["viewer_id"] for r in located.rows] == [r["viewer_id"] for r in plain.rows]
            if not plain.rows:
                break
        assert pages > 3


async def test_a_disconnected_viewer_leaves_no_span_counts_behind(api: FreshApi) -> None:
    await report(api, [connect(1), connect(2)])
    await report(api, [{"type": "disconnect", "id": "v0001"}])
    left = await api.pool.fetch("SELECT DISTINCT term FROM viewer_term_spans ORDER BY term")
    assert [r["term"] for r in left] == ["", "v0002"]
    await report(api, [{"type": "disconnect", "id": "v0002"}])
    assert await api.pool.fetchval("SELECT count(*) FROM viewer_term_spans") == 0
