"""The `viewers` projection: live rows only, latest stats of a batch, exact counts; the
ViewerRecorder end to end."""

from __future__ import annotations

import uuid

import asyncpg

from spool.adapters.client_facts import describer
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.settings import Settings
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.domain import viewer
from spool.domain.events import NewEvent
from spool.reactors.projection import ProjectionRunner

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


def connected(viewer_id: str, key: str, **fields: object) -> viewer.ViewerConnected:
    return viewer.ViewerConnected(
        viewer_id=viewer_id,
        harness_type=str(fields.pop("harness_type", "GENERIC_HLS_VIEWER")),
        state="PLAYING",
        stream_key=key,
        started_at=1_770_000_000_000,
        **fields,  # type: ignore[arg-type]
    )


def stats(viewer_id: str, out_bw: int, out_total: int, **fields: object) -> viewer.ViewerStats:
    return viewer.ViewerStats(
        viewer_id=viewer_id,
        in_bandwidth=0,
        out_bandwidth=out_bw,
        in_total_bytes=0,
        out_total_bytes=out_total,
        **fields,  # type: ignore[arg-type]
    )


async def append(store: EventStore, viewer_id: str, *events: viewer.ViewerEvent) -> None:
    await store.append(viewer.stream_id(viewer_id), [NewEvent(e) for e in events], None)


async def row(pool: asyncpg.Pool, viewer_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM viewers WHERE viewer_id = $1", viewer_id)


async def count(pool: asyncpg.Pool, term: str) -> int:
    total: int = await pool.fetchval(
        "SELECT coalesce(sum(live), 0)::bigint FROM viewer_term_counts WHERE term = $1", term
    )
    return total


def unique() -> str:
    return f"k-{uuid.uuid4().hex[:10]}"


async def test_the_latest_stats_of_a_batch_win_and_health_is_stored(
    store: EventStore, runner: ProjectionRunner, pool: asyncpg.Pool
) -> None:
    vid, key = unique(), unique()
    await append(
        store,
        vid,
        connected(vid, key, bitrate=1_000_000),
        stats(vid, 10_000, 10_000),
        stats(vid, 125_000, 135_000),
        stats(vid, 62_500, 197_500),
    )
    await runner.settle("viewers")
    r = await row(pool, vid)
    assert r is not None
    assert (r["out_bandwidth"], r["out_total_bytes"], r["version"]) == (62_500, 197_500, 4)
    assert (r["health_score"], r["health_grade"], r["measured"]) == (50, "Fair", True)


async def test_a_bitrate_learned_later_is_kept_by_stats_without_one(
    store: EventStore, runner: ProjectionRunner, pool: asyncpg.Pool
) -> None:
    vid = unique()
    await append(store, vid, connected(vid, unique()))
    await runner.settle("viewers")
    assert (await row(pool, vid))["health_grade"] == "No Data"  # type: ignore[index]
    await append(store, vid, stats(vid, 125_000, 1, bitrate=1_000_000), stats(vid, 125_000, 2))
    await runner.settle("viewers")
    r = await row(pool, vid)
    assert r is not None and (r["bitrate"], r["health_score"]) == (1_000_000, 100)


async def test_disconnect_deletes_the_row_and_its_counts(
    store: EventStore, runner: ProjectionRunner, pool: asyncpg.Pool
) -> None:
    key = unique()
    a, b = unique(), unique()
    await append(store, a, connected(a, key, country_code="PL", country_name="Poland"))
    await append(store, b, connected(b, key, harness_type="TRANSCODER"))
    await runner.settle("viewers")
    assert await count(pool, key) == 2
    assert await count(pool, a) == 1
    await append(
        store, a, viewer.ViewerDisconnected(viewer_id=a, reason="closed", in_total_bytes=0,
                                            out_total_bytes=0)
    )  # fmt: skip
    await runner.settle("viewers")
    assert await row(pool, a) is None
    assert await count(pool, key) == 1
    assert await pool.fetchval("SELECT count(*) FROM viewer_term_counts WHERE term = $1", a) == 0
    assert await pool.fetchval("SELECT count(*) FROM viewer_terms WHERE viewer_id = $1", a) == 0


async def test_stats_and_state_after_a_disconnect_are_ignored(
    store: EventStore, runner: ProjectionRunner, pool: asyncpg.Pool
) -> None:
    vid = unique()
    await append(
        store,
        vid,
        connected(vid, unique()),
        viewer.ViewerDisconnected(viewer_id=vid, reason="closed", in_total_bytes=0,
                                  out_total_bytes=0),
    )  # fmt: skip
    await runner.settle("viewers")
    # Written straight to the log (the API would refuse them): the projection must not revive it.
    await append(store, vid, stats(vid, 1, 1), viewer.ViewerStateChanged(viewer_id=vid, state="P"))
    await runner.settle("viewers")
    assert await row(pool, vid) is None
    assert await count(pool, vid) == 0


async def test_many_viewers_in_one_batch_each_get_their_own_latest_stats(
    store: EventStore, runner: ProjectionRunner, pool: asyncpg.Pool
) -> None:
    key = unique()
    ids = [unique() for _ in range(50)]
    await store.append_many(
        [StreamAppend(viewer.stream_id(v), [NewEvent(connected(v, key))], 0) for v in ids]
    )
    twice = [
        StreamAppend(
            viewer.stream_id(v), [NewEvent(stats(v, i, i)), NewEvent(stats(v, i, 2 * i))], 1
        )
        for i, v in enumerate(ids)
    ]
    await store.append_many(twice)
    await runner.settle("viewers")
    rows = await pool.fetch(
        "SELECT viewer_id, out_total_bytes FROM viewers WHERE stream_key = $1", key
    )
    assert {r["viewer_id"]: r["out_total_bytes"] for r in rows} == {
        v: i * 2 for i, v in enumerate(ids)
    }
    assert await count(pool, key) == 50


async def test_a_rebuild_gives_the_same_live_viewers(
    store: EventStore, runner: ProjectionRunner, pool: asyncpg.Pool
) -> None:
    key = unique()
    a, b = unique(), unique()
    await append(store, a, connected(a, key), stats(a, 5, 5))
    await append(store, b, connected(b, key))
    await runner.settle("viewers")
    before = await pool.fetch(
        "SELECT viewer_id, out_total_bytes, version FROM viewers WHERE stream_key = $1 "
        "ORDER BY viewer_id",
        key,
    )
    await runner.rebuild("viewers")
    after = await pool.fetch(
        "SELECT viewer_id, out_total_bytes, version FROM viewers WHERE stream_key = $1 "
        "ORDER BY viewer_id",
        key,
    )
    assert [tuple(r) for r in after] == [tuple(r) for r in before]
    assert await count(pool, key) == 2


async def test_the_recorder_opens_reports_and_closes_a_viewer_end_to_end(
    store: EventStore, runner: ProjectionRunner, pool: asyncpg.Pool
) -> None:
    recorder = ViewerRecorder(
        store, node_id="test-node", interval=3600, describe=describer(Settings())
    )
    key = unique()
    session = await recorder.open(
        harness_type="GENERIC_HLS_VIEWER",
        state="PLAYING",
        stream_key=key,
        remote_address="83.11.198.11",
        user_agent=CHROME_WINDOWS,
        bitrate=800_000,
    )
    await recorder.flush()  # the connect waits in the queue until then
    await runner.settle("viewers")
    r = await row(pool, session.viewer_id)
    assert r is not None
    assert (r["device_type"], r["os_name"], r["browser_name"]) == (
        "DESKTOP",
        "Windows 10/11",
        "Chrome",
    )
    assert (r["node_id"], r["health_grade"]) == ("test-node", "No Data")

    session.add_in(300)
    session.add_out(5_000_000)
    await recorder.flush()
    await runner.settle("viewers")
    r = await row(pool, session.viewer_id)
    assert r is not None
    assert (r["in_total_bytes"], r["out_total_bytes"]) == (300, 5_000_000)
    assert r["out_bandwidth"] > 0 and r["health_score"] == 100  # far faster than 100 kB/s
    assert r["health_grade"] == "Very Good"

    session.close()
    await recorder.flush()
    await runner.settle("viewers")
    assert await row(pool, session.viewer_id) is None
    last = (await store.read_stream(viewer.stream_id(session.viewer_id)))[-1].data
    assert isinstance(last, viewer.ViewerDisconnected)
    assert (last.reason, last.out_total_bytes) == ("closed", 5_000_000)
    await recorder.aclose()


async def test_sessions_opened_and_closed_between_flushes_are_written_in_one_transaction(
    store: EventStore,
) -> None:
    # A node opens and closes two sessions per job: they ride one batched append, not four.
    recorder = ViewerRecorder(store, node_id="test-node", interval=3600)
    sessions = [
        await recorder.open(harness_type=h, state="RUNNING", stream_key=unique())
        for h in ("TRANSCODER", "FILE_WRITER", "TRANSCODER")
    ]
    sessions[0].add_in(1_000)
    sessions[0].close()
    sessions[1].set_state("WRITING")
    await recorder.flush()
    streams = [await store.read_stream(viewer.stream_id(s.viewer_id)) for s in sessions]
    assert [[e.type for e in events] for events in streams] == [
        ["ViewerConnected", "ViewerDisconnected"],
        ["ViewerConnected", "ViewerStateChanged"],
        ["ViewerConnected"],
    ]
    assert len({e.tx for events in streams for e in events}) == 1
    assert streams[0][-1].data == viewer.ViewerDisconnected(
        viewer_id=sessions[0].viewer_id, reason="closed", in_total_bytes=1_000, out_total_bytes=0
    )
    assert set(recorder.sessions) == {sessions[1].viewer_id, sessions[2].viewer_id}
    await recorder.aclose()
    for s in sessions[1:]:
        last = (await store.read_stream(viewer.stream_id(s.viewer_id)))[-1].data
        assert isinstance(last, viewer.ViewerDisconnected)
