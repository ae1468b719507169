"""The API host's link to the database host slowed and lossy (tests/cluster/slow_link.py):
jobs still complete, once, and what the dashboard reads agrees with the log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from spool.adapters.event_store import ORIGIN, Checkpoint, EventStore
from spool.domain import job
from tests.cluster.multihost import MultiHost
from tests.cluster.slow_link import RTO_MIN, SEGMENT, Impairment, relay, slow, unslow
from tests.faults.checks import assert_log_and_bucket_clean

SLOWABLE = True
"""This module's cluster can slow its hosts' links (tests/cluster/conftest.py `three_nodes`)."""

JOBS = 12
"""Enough that every node downloads, muxes and uploads several while the API and the reactors
wait a round trip of the slow link on each query; few enough for a test of seconds."""


async def test_jobs_complete_and_the_dashboard_agrees_with_the_log_over_a_slow_lossy_link(
    cluster: MultiHost,
) -> None:
    how = slow(cluster.api, delay=0.05, loss=0.01)
    print(f"the API host's link slowed to 50 ms each way, 1 % loss, by {how}")
    # Each of the API's queries now costs it a round trip of the link, at the least.
    started = time.monotonic()
    await cluster.statuses()
    assert time.monotonic() - started >= 2 * 0.05
    url = cluster.db.media.url("clip.mp4")

    jobs = await cluster.create_jobs({"url": url, "filename": f"slow{i}"} for i in range(JOBS))
    shown_offline: list[set[str]] = []
    watching = asyncio.create_task(_note_nodes_shown_offline(cluster, shown_offline))
    try:
        ended = await cluster.wait_ended(jobs, seconds=120)
        if watching.done():
            watching.result()  # its failure to read the dashboard
    finally:
        watching.cancel()

    # The nodes' heartbeats reach the log at full speed; the API reads them over the slow link.
    assert shown_offline == []

    others = [j for j, status in ended.items() if status != "Completed"]
    assert others == [], f"{others[0]}:\n{await cluster.story(others[0])}"
    await assert_log_and_bucket_clean(
        cluster.database_url, cluster.store, cluster.db.objects(), jobs
    )
    assert await _completed_in_log(cluster.store) == set(jobs)
    await _until_the_dashboard_shows(cluster, completed=len(jobs))
    if cluster.api.relay is not None:
        # Its bound on connections turned none away: the delay and the loss were all it did.
        assert cluster.api.relay.refused == 0
    unslow(cluster.api)


async def _note_nodes_shown_offline(cluster: MultiHost, offline: list[set[str]]) -> None:
    """Add to `offline` the nodes each look at the dashboard's node list finds offline."""
    while True:
        answer = await cluster.client.get("/dashboard/nodes")
        assert answer.status_code == 200, answer.text
        online = {n["node_id"] for n in answer.json()["nodes"] if n["online"]}
        if missing := set(cluster.nodes) - online:
            offline.append(missing)
        await asyncio.sleep(0.5)


async def _completed_in_log(store: EventStore) -> set[str]:
    """The jobs a JobCompleted in the log names."""
    streams: set[str] = set()
    after: Checkpoint = ORIGIN
    while page := await store.read_all(after, types=["JobCompleted"]):
        streams |= {e.stream_id for e in page}
        after = Checkpoint(page[-1].tx, page[-1].position)
    return {s.removeprefix(job.stream_id("")) for s in streams}


async def _until_the_dashboard_shows(cluster: MultiHost, *, completed: int) -> None:
    """Wait until every panel the dashboard page polls (api/static/dashboard.js) says what the
    log says: `completed` jobs done and none failed, every node online and idle, no job listed
    as running. The projections behind them follow the log, so they may lag it a moment."""
    deadline = time.monotonic() + 30
    while True:
        seen = await _dashboard(cluster)
        nodes = seen["nodes"]["nodes"]
        points = seen["throughput"]["points"]
        wrong = {
            "cluster": seen["cluster"] != {k: 0 for k in seen["cluster"]},
            "online": {n["node_id"] for n in nodes if n["online"]} != set(cluster.nodes),
            "busy": any(
                n[k] for n in nodes for k in ("downloading", "muxing", "uploading", "running")
            ),
            "completed": sum(p["completed"] for p in points) != completed,
            "failed": sum(p["failed"] for p in points) != 0,
            "jobs": any(j["status"] not in job.TERMINAL for j in seen["jobs"]["jobs"]),
        }
        if not any(wrong.values()):
            return
        assert time.monotonic() < deadline, ([k for k, v in wrong.items() if v], seen)
        await asyncio.sleep(0.5)


async def _dashboard(cluster: MultiHost) -> dict[str, Any]:
    """What the dashboard page reads, each panel by its name."""
    paths = {
        "cluster": "/dashboard/cluster",
        "nodes": "/dashboard/nodes",
        "throughput": "/dashboard/throughput?minutes=60",
        "jobs": "/jobs?limit=20",
    }
    found: dict[str, Any] = {}
    for name, path in paths.items():
        answer = await cluster.client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        found[name] = answer.json()
    return found


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_a_relay_holds_a_slowed_hosts_traffic_each_way_in_order_and_no_one_elses() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    upstream = f"TCP:127.0.0.1:{server.sockets[0].getsockname()[1]}"
    sent = b"".join(b"%d\n" % i for i in range(10_000))
    try:
        with relay("127.0.0.1") as relaying:
            port = relaying.forward(0, upstream)
            # Three hosts on one relay: loopback answers on all of 127.0.0.0/8.
            slowed, stalled, other = [
                await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{n}", 0))
                for n in (1, 2, 3)
            ]
            relaying.impairments["127.0.0.1"] = Impairment(delay=0.05)
            relaying.impairments["127.0.0.2"] = Impairment(delay=600)

            started = time.monotonic()
            for _, writer in (slowed, stalled, other):
                writer.write(sent)

            assert await slowed[0].readexactly(len(sent)) == sent
            assert time.monotonic() - started >= 2 * 0.05
            assert await asyncio.wait_for(other[0].readexactly(len(sent)), 60) == sent
        for reader, writer in (slowed, stalled, other):
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed with the relay
            writer.close()
    finally:
        server.close()


def test_a_chunk_of_many_segments_is_stalled_as_often_as_one_of_them_is_lost() -> None:
    lossy = Impairment(delay=0.05, loss=0.01)
    one_segment, forty_segments = 1 - 0.99, 1 - 0.99**40

    assert lossy.hold(100, one_segment - 1e-9) == 0.05 + RTO_MIN
    assert lossy.hold(100, one_segment + 1e-9) == 0.05
    assert lossy.hold(40 * SEGMENT, forty_segments - 1e-9) == 0.05 + RTO_MIN
    assert lossy.hold(40 * SEGMENT, forty_segments + 1e-9) == 0.05
