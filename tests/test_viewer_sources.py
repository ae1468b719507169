"""Where viewers come from: Spool's own websockets, playback through `/media`, and stage sessions.

Each connection is checked in the event log (its `viewer-<id>` stream folded): harness type,
stream key, account, byte totals equal to what really crossed the wire, and a goodbye at the end.
A real `curl` download is also watched in `GET /api/cluster/viewers` while it plays.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from spool.adapters.job_store import load_job
from spool.api.services import services_of
from tests.cluster_api_helpers import FreshApi, fresh_api
from tests.fixtures.cluster import StartCluster
from tests.fixtures.loopback import serve_on_loopback
from tests.fixtures.media import MediaServer, make_clip
from tests.media_helpers import finished_job, viewers, wait_for_viewer

VIEWER_TIMEOUT = 1.0
"""The served app's `viewer_timeout`: short, so an idle HLS viewer closes quickly."""

CLIP_SECONDS = 6.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", CLIP_SECONDS)


@dataclass
class Served:
    api: FreshApi
    base: str
    ws: str


@pytest.fixture
async def served(fresh_database_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    """The API behind a real uvicorn on loopback, lifespan and all."""
    async with (
        fresh_api(
            fresh_database_url,
            redis_url,
            data_dir=tmp_path / "data",
            viewer_timeout=VIEWER_TIMEOUT,
            viewer_stats_interval=0.5,
        ) as api,
        serve_on_loopback(api.app) as port,
    ):
        yield Served(api, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")


async def test_a_ws_client_is_a_cluster_data_client_with_its_bytes(served: Served) -> None:
    api = served.api
    received = 0
    async with websockets.connect(f"{served.ws}/ws", additional_headers=api.user()) as ws:
        connected = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(connected, str)
        received += len(connected.encode())
        live = await wait_for_viewer(api.store, "CLUSTER_DATA_CLIENT", "/ws", closed=False)
        await ws.send("hello")
    seen = await wait_for_viewer(api.store, "CLUSTER_DATA_CLIENT", "/ws")
    assert seen.connected.viewer_id == live.connected.viewer_id
    assert seen.connected.application_id == api.account_id
    assert seen.connected.remote_address == "127.0.0.1"
    assert seen.connected.user_agent.startswith("Python/")
    assert seen.connected.state == "CONNECTED"
    assert (seen.state.in_total_bytes, seen.state.out_total_bytes) == (5, received)
    assert seen.reason == "closed"


async def test_a_health_ws_client_is_a_cluster_data_client_with_its_bytes(served: Served) -> None:
    api = served.api
    answer = await api.client.post("/api/auth/token", headers=api.user())
    token = answer.json()["token"]
    async with websockets.connect(f"{served.ws}/api/health/ws") as ws:
        await ws.send(f"auth {token}")
        assert await asyncio.wait_for(ws.recv(), 10) == "ok"
        await ws.send("requests")
        reply = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(reply, str)
    seen = await wait_for_viewer(api.store, "CLUSTER_DATA_CLIENT", "/api/health/ws")
    assert seen.connected.application_id == api.account_id
    assert seen.state.in_total_bytes == len("requests")
    assert seen.state.out_total_bytes == len(reply.encode())
    assert seen.state.closed


async def test_a_download_is_a_progressive_viewer_counting_the_bytes_sent(
    served: Served, clip: Path
) -> None:
    api = served.api
    job_id = await finished_job(
        api.store, services_of(api.app).storage, api.account_id, clip, duration=CLIP_SECONDS
    )
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        got = await http.get(f"/media/{job_id}", headers={**api.user(), "User-Agent": "curl/8.5.0"})
    assert got.status_code == 200
    assert got.content == clip.read_bytes()
    seen = await wait_for_viewer(api.store, "GENERIC_PROGRESSIVE_VIEWER", job_id)
    assert seen.state.out_total_bytes == len(got.content)
    assert seen.state.in_total_bytes == 0
    assert seen.connected.user_agent == "curl/8.5.0"
    assert seen.connected.application_id == api.account_id
    assert seen.connected.bitrate == int(len(got.content) * 8 / CLIP_SECONDS)
    assert seen.reason == "closed"


async def test_a_range_request_counts_only_its_range(served: Served, clip: Path) -> None:
    api = served.api
    job_id = await finished_job(
        api.store, services_of(api.app).storage, api.account_id, clip, duration=CLIP_SECONDS
    )
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        got = await http.get(f"/media/{job_id}", headers={**api.user(), "Range": "bytes=-1000"})
        assert got.status_code == 206
        head = await http.head(f"/media/{job_id}", headers=api.user())
        assert head.status_code == 200
    seen = await wait_for_viewer(api.store, "GENERIC_PROGRESSIVE_VIEWER", job_id)
    assert seen.state.out_total_bytes == 1000  # and HEAD made no viewer at all


async def test_a_client_that_leaves_mid_download_ends_its_viewer(
    served: Served, tmp_path: Path
) -> None:
    api = served.api
    big = make_clip(tmp_path / "big.mp4", 60.0, width=640, height=480)
    job_id = await finished_job(
        api.store, services_of(api.app).storage, api.account_id, big, duration=60
    )
    async with (
        httpx.AsyncClient(base_url=served.base, timeout=30) as http,
        http.stream("GET", f"/media/{job_id}", headers=api.user()) as answer,
    ):
        assert answer.status_code == 200
        taken = 0
        async for chunk in answer.aiter_raw():
            taken += len(chunk)
            break
    seen = await wait_for_viewer(api.store, "GENERIC_PROGRESSIVE_VIEWER", job_id)
    assert 0 < seen.state.out_total_bytes <= big.stat().st_size
    assert seen.reason == "closed"


async def test_hls_playback_is_one_viewer_closed_after_it_goes_idle(
    served: Served, clip: Path
) -> None:
    api = served.api
    job_id = await finished_job(
        api.store, services_of(api.app).storage, api.account_id, clip, duration=CLIP_SECONDS
    )
    headers = {**api.user(), "User-Agent": "hls-player/1.0"}
    sent = 0
    async with httpx.AsyncClient(base_url=served.base, timeout=60) as http:
        playlist = await http.get(f"/media/{job_id}/index.m3u8", headers=headers)
        assert playlist.status_code == 200
        sent += len(playlist.content)
        for uri in [u for u in playlist.text.splitlines() if u and not u.startswith("#")]:
            segment = await http.get(f"/media/{job_id}/{uri}", headers=headers)
            assert segment.status_code == 200
            sent += len(segment.content)
        live = await wait_for_viewer(api.store, "GENERIC_HLS_VIEWER", job_id, closed=False)
        assert live.connected.user_agent == "hls-player/1.0"
    seen = await wait_for_viewer(
        api.store, "GENERIC_HLS_VIEWER", job_id, within=VIEWER_TIMEOUT + 10
    )
    assert seen.connected.viewer_id == live.connected.viewer_id  # many requests, one viewer
    assert seen.state.out_total_bytes == sent
    assert seen.connected.application_id == api.account_id
    assert seen.reason == "closed"


async def test_a_job_on_a_node_is_a_transcoder_then_a_file_writer(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(viewer_stats_interval=0.5) as cluster:
        job_id = await cluster.create(media_server.url("clip.mp4"), filename="seen")
        done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)
        assert done["status"] == "Completed", done
        state = await load_job(cluster.store, job_id)
        assert state is not None
        mux = await wait_for_viewer(cluster.store, "TRANSCODER", job_id)
        upload = await wait_for_viewer(cluster.store, "FILE_WRITER", job_id)
        assert cluster.node is not None
        for seen in (mux, upload):
            assert seen.connected.application_id == state.account_id
            assert seen.connected.node_id == cluster.node.node_id
            assert seen.connected.remote_address == cluster.node.ip
            assert seen.reason == "closed"
        assert mux.connected.state == "TRANSCODING"
        assert mux.state.in_total_bytes == sum(
            f.size for f in state.files if f.kind in ("video", "audio", "av")
        )
        assert mux.state.out_total_bytes == done["file_size"]
        assert upload.connected.state == "WRITING"
        assert upload.state.out_total_bytes == done["file_size"]
        assert all(v.state.closed for v in await viewers(cluster.store))


async def _progressive_rows(api: FreshApi, job_id: str) -> list[dict[str, Any]]:
    """The list's progressive viewers of `job_id` (searched by stream key), projection caught up."""
    await api.runner.settle("viewers")
    answer = await api.client.get(
        "/api/cluster/viewers",
        params={"harnessType": "GENERIC_PROGRESSIVE_VIEWER", "search": job_id},
        headers={"Authorization": f"Bearer {api.admin_key}"},
    )
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["data"]["list"]
    return rows


async def test_curl_playing_an_output_is_listed_with_growing_bytes_then_vanishes(
    served: Served, tmp_path: Path
) -> None:
    # The server counts what it hands to the socket, and loopback's socket buffers take about
    # 10 MB at once (tcp_rmem here grows to 32 MB): a small output is all "sent" within half a
    # second while curl still reads it for seconds, and its viewer has ended by then. So the
    # output is uncompressed video (cheap to make, 35 MB) and curl reads it at 7 MB/s.
    api = served.api
    raw = make_clip(tmp_path / "raw.mkv", 12.0, video_codec="rawvideo", audio_codec="pcm_s16le")
    size = raw.stat().st_size
    job_id = await finished_job(
        api.store, services_of(api.app).storage, api.account_id, raw, duration=12
    )
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--output",
        "/dev/null",
        "--limit-rate",
        "7M",
        "--header",
        f"x-api-key: {api.key}",
        "--write-out",
        "%{http_code} %{size_download}",
        f"{served.base}/media/{job_id}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    playing: list[dict[str, Any]] = []
    while curl.returncode is None:
        rows = await _progressive_rows(api, job_id)
        if curl.returncode is None and rows:
            playing.append(rows[0])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(curl.wait(), 0.1)
    out, err = await curl.communicate()
    assert curl.returncode == 0, err
    assert out.decode() == f"200 {size}"

    assert playing, "curl's viewer was never listed while it played"
    row = playing[-1]
    assert len({r["id"] for r in playing}) == 1
    assert (row["harnessType"], row["streamKey"]) == ("GENERIC_PROGRESSIVE_VIEWER", job_id)
    assert row["state"] == "PLAYING"
    assert (row["browserName"], row["deviceType"]) == ("curl", "DESKTOP")
    assert row["remoteAddress"] == "127.0.0.1"
    assert row["applicationId"] == api.account_id
    sent = [r["outTotalBytes"] for r in playing]
    assert sent == sorted(sent) and sent[-1] <= size
    assert len({n for n in sent if 0 < n < size}) >= 2, f"bytes never grew while listed: {sent}"

    deadline = time.monotonic() + 10
    while await _progressive_rows(api, job_id):
        assert time.monotonic() < deadline, "curl's viewer outlived the download"
        await asyncio.sleep(0.1)
    seen = await wait_for_viewer(api.store, "GENERIC_PROGRESSIVE_VIEWER", job_id)
    assert seen.state.out_total_bytes == size
    assert seen.reason == "closed"
