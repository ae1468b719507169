"""Issue 6, end to end: a dashboard websocket, a worker muxing and uploading a job, and a client
playing the output (HLS) all show in `GET /api/cluster/viewers` with the right harness types and
bytes, and vanish when they end. The `curl` binary playing an output progressively is watched in
the list by `tests/test_viewer_sources.py`.

The cluster is real (projections, pipeline, a node, moto S3 behind a throttling proxy). The
upload is paused at the proxy so the FILE_WRITER stays on the list long enough to be seen; the
mux re-encodes a 20 s clip so the TRANSCODER does too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

from spool.api.app import create_app
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.loopback import serve_on_loopback
from tests.fixtures.media import MediaServer, make_clip
from tests.fixtures.throttle import ThrottledS3, throttled_s3  # noqa: F401 - the fixture


async def _listed(cluster: Cluster) -> list[dict[str, Any]]:
    answer = await cluster.client.get(
        "/api/cluster/viewers",
        params={"rowsPerPage": 100},
        headers={"Authorization": f"Bearer {cluster.admin_key}"},
    )
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["data"]["list"]
    return rows


async def _until(
    cluster: Cluster, check: Callable[[list[dict[str, Any]]], Any], within: float = 60
) -> Any:
    """Poll the viewer list until `check` returns something truthy; return it."""
    deadline = time.monotonic() + within
    while True:
        rows = await _listed(cluster)
        found = check(rows)
        if found:
            return found
        assert time.monotonic() < deadline, f"viewer list never matched: {rows}"
        await asyncio.sleep(0.1)


def _one(harness: str, key: str, **where: Any) -> Callable[[list[dict[str, Any]]], Any]:
    def check(rows: list[dict[str, Any]]) -> Any:
        for row in rows:
            if (
                row["harnessType"] == harness
                and row["streamKey"] == key
                and all(cond(row[name]) for name, cond in where.items())
            ):
                return row
        return None

    return check


def _none(harness: str, key: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: not any(r["harnessType"] == harness and r["streamKey"] == key for r in rows)


async def test_websocket_worker_and_player_show_in_the_viewer_list_then_vanish(
    start_cluster: StartCluster,
    throttled_s3: ThrottledS3,  # noqa: F811 - the fixture
    media_server: MediaServer,
    media_dir: Path,
) -> None:
    make_clip(media_dir / "viewers-live.mp4", 20.0, width=640, height=480)
    async with start_cluster(
        storage_url=throttled_s3.storage_url, viewer_stats_interval=0.5, viewer_timeout=3.0
    ) as cluster:
        # A second API process of the same cluster, on a real port for websockets and players.
        app = create_app(
            pool=cluster.pool,
            store=cluster.store,
            settings=cluster.settings,
            storage=cluster.storage,
        )
        async with serve_on_loopback(app) as port:
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ws", additional_headers=cluster.headers()
            ) as ws:
                first = await asyncio.wait_for(ws.recv(), 10)
                row = await _until(
                    cluster, _one("CLUSTER_DATA_CLIENT", "/ws", outTotalBytes=lambda n: n > 0)
                )
                assert row["remoteAddress"] == "127.0.0.1"
                assert row["outTotalBytes"] >= len(str(first))

                throttled_s3.proxy.pause()  # the upload will hang until we let go
                job_id = await cluster.create(
                    media_server.url("viewers-live.mp4"), video_codec="h264", filename="live"
                )
                mux = await _until(
                    cluster, _one("TRANSCODER", job_id, outTotalBytes=lambda n: n > 0)
                )
                assert mux["inTotalBytes"] > 0
                # A file this small goes up in one PUT: its bytes count once it is sent.
                upload = await _until(cluster, _one("FILE_WRITER", job_id))
                assert upload["state"] == "WRITING"
                await _until(cluster, _none("TRANSCODER", job_id))
                throttled_s3.proxy.unthrottle()
                done = await cluster.wait(job_id, "Completed", "Failed", seconds=120)
                assert done["status"] == "Completed", done
                await _until(cluster, _none("FILE_WRITER", job_id))

            await _until(cluster, _none("CLUSTER_DATA_CLIENT", "/ws"))

            # A player (an HTTP client with curl's User-Agent) plays the output over HLS: many
            # requests, one viewer, listed with every byte it was sent, until it has been idle
            # for `viewer_timeout`.
            headers = {**cluster.headers(), "User-Agent": "curl/8.5.0"}
            sent = 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                playlist = await http.get(f"/media/{job_id}/index.m3u8", headers=headers)
                assert playlist.status_code == 200, playlist.text
                sent += len(playlist.content)
                for uri in [u for u in playlist.text.splitlines() if u and u[0] != "#"]:
                    segment = await http.get(f"/media/{job_id}/{uri}", headers=headers)
                    assert segment.status_code == 200
                    sent += len(segment.content)
            playing = await _until(
                cluster, _one("GENERIC_HLS_VIEWER", job_id, outTotalBytes=lambda n: n == sent)
            )
            assert playing["remoteAddress"] == "127.0.0.1"
            assert playing["applicationId"] == mux["applicationId"]
            await _until(cluster, _none("GENERIC_HLS_VIEWER", job_id))
