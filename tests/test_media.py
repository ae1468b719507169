"""Playback of finished outputs: `GET /media/{job_id}` with HTTP Range, HEAD, auth, and HLS.

Real parts: the job's output is an FFmpeg-made clip stored in moto's S3 server (or a folder, or
Azurite for the storage-level ranged reads); HLS is cut by FFmpeg and read back by FFmpeg over a
real loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from spool.adapters.blob_storage import BlobStorage
from spool.adapters.event_store import EventStore
from spool.adapters.ffmpeg import ffmpeg_exe
from spool.adapters.media_cache import HlsCache, HlsRemoved
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage, ObjectStorage, StorageError, storage_from_url
from spool.api.app import create_app
from spool.api.media import byte_range, playlist_with_token
from spool.api.services import services_of
from spool.domain import job
from spool.domain.events import NewEvent
from spool.keys import issue
from spool.reactors.operations import OperationRunner
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.azurite import AzuriteServer, azurite_fixture  # noqa: F401 - the fixture
from tests.fixtures.loopback import serve_on_loopback
from tests.fixtures.media import make_clip, media_duration, media_streams
from tests.fixtures.s3 import S3Server
from tests.fixtures.waiting import until
from tests.media_helpers import finished_job, pending_job

CLIP_SECONDS = 6.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 s H.264/AAC MP4 with a keyframe every half second (so HLS can cut 4 s segments)."""
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", CLIP_SECONDS)


@dataclass
class Playback:
    app: Litestar
    client: httpx.AsyncClient
    store: EventStore
    storage: ObjectStorage
    key: str
    account_id: str
    job_id: str
    data: bytes

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"x-api-key": key or self.key}

    async def token(self) -> str:
        answer = await self.client.post("/api/auth/token", headers=self.auth())
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["token"]
        return token


@contextlib.asynccontextmanager
async def _playing(
    store: EventStore, runner: ProjectionRunner, storage_url: str, data_dir: Path, clip: Path
) -> AsyncIterator[Playback]:
    """The API over the run's database with `storage_url` as default storage, and one finished
    job whose output is `clip`."""
    settings = Settings(data_dir=data_dir, secret_key="test-secret-key", rate_limit=100_000)
    storage = storage_from_url(storage_url, data_dir=settings.data_dir)
    issued = await issue(store, name=f"player-{uuid.uuid4().hex[:6]}", admin=False)
    await runner.wait_until("api_keys", issued.at)
    job_id = await finished_job(store, storage, issued.account_id, clip, duration=CLIP_SECONDS)
    app = create_app(pool=store.pool, store=store, settings=settings, storage=storage)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://spool.test", timeout=60
    ) as client:
        yield Playback(
            app, client, store, storage, issued.key, issued.account_id, job_id, clip.read_bytes()
        )
    await services_of(app).media.aclose()
    await services_of(app).viewers.aclose()
    await storage.close()


@pytest.fixture
async def playback(
    store: EventStore,
    runner: ProjectionRunner,
    s3_storage_url: str,
    tmp_path: Path,
    clip: Path,
) -> AsyncIterator[Playback]:
    """The API over the run's database with moto S3 as default storage, and one finished job."""
    async with _playing(store, runner, s3_storage_url, tmp_path / "data", clip) as playing:
        yield playing


@pytest.fixture(scope="module")
async def stored(
    store: EventStore,
    runner: ProjectionRunner,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
    clip: Path,
) -> AsyncIterator[Playback]:
    """`playback` for the module's tests that only read the stored file: one upload for them all."""
    bucket = f"spool-test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=bucket)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
        env.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
        url = f"s3://{bucket}/media?endpoint={s3_server.endpoint_url}&region={s3_server.region}"
        data_dir = tmp_path_factory.mktemp("stored") / "data"
        async with _playing(store, runner, url, data_dir, clip) as playing:
            yield playing


# -- the Range header, alone ---------------------------------------------------------------------


def test_range_headers_are_read_as_rfc_9110_says() -> None:
    assert byte_range(None, 1000) is None
    assert byte_range("bytes=0-99", 1000) == (0, 99)
    assert byte_range("bytes=500-", 1000) == (500, 999)
    assert byte_range("bytes=-100", 1000) == (900, 999)
    assert byte_range("bytes=-5000", 1000) == (0, 999)
    assert byte_range("bytes=900-5000", 1000) == (900, 999)
    # Malformed or multiple ranges are ignored: the whole file is sent.
    for ignored in ("bytes=5-1", "items=0-1", "bytes=0-1,5-6", "bytes=-", "bytes=a-b"):
        assert byte_range(ignored, 1000) is None, ignored


# -- progressive ---------------------------------------------------------------------------------


async def test_a_plain_get_streams_the_whole_stored_file(stored: Playback) -> None:
    answer = await stored.client.get(f"/media/{stored.job_id}", headers=stored.auth())
    assert answer.status_code == 200, answer.text
    assert answer.content == stored.data
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["content-length"] == str(len(stored.data))
    assert "content-range" not in answer.headers


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),  # the first bytes, as a player sniffs the container
        ("bytes=1000-1999", 1000, 1999),  # the middle, as a seek does
        ("bytes=-500", -500, None),  # the suffix: where an MP4 may keep its index
        ("bytes=2000-", 2000, None),  # open-ended: from a seek to the end
    ],
    ids=["first-bytes", "middle", "suffix", "open-ended"],
)
async def test_a_range_gets_206_with_exactly_those_bytes(
    stored: Playback, header: str, first: int, last: int | None
) -> None:
    size = len(stored.data)
    answer = await stored.client.get(
        f"/media/{stored.job_id}", headers={**stored.auth(), "Range": header}
    )
    assert answer.status_code == 206, answer.text
    start = first if first >= 0 else size + first
    end = last if last is not None else size - 1
    assert answer.content == stored.data[start : end + 1]
    assert answer.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert answer.headers["content-length"] == str(end - start + 1)
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["accept-ranges"] == "bytes"


async def test_a_range_past_the_end_is_416_with_the_size(stored: Playback) -> None:
    size = len(stored.data)
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        answer = await stored.client.get(
            f"/media/{stored.job_id}", headers={**stored.auth(), "Range": header}
        )
        assert answer.status_code == 416, header
        assert answer.headers["content-range"] == f"bytes */{size}"
        assert "error" in answer.json()


async def test_head_tells_size_and_type_without_a_body(stored: Playback) -> None:
    size = len(stored.data)
    answer = await stored.client.head(f"/media/{stored.job_id}", headers=stored.auth())
    assert answer.status_code == 200
    assert answer.content == b""
    assert answer.headers["content-length"] == str(size)
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["accept-ranges"] == "bytes"
    ranged = await stored.client.head(
        f"/media/{stored.job_id}", headers={**stored.auth(), "Range": "bytes=10-19"}
    )
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 10-19/{size}"
    assert ranged.headers["content-length"] == "10"


async def test_a_token_in_the_url_plays_without_headers(stored: Playback) -> None:
    token = await stored.token()
    answer = await stored.client.get(f"/media/{stored.job_id}", params={"token": token})
    assert answer.status_code == 200
    assert answer.content == stored.data
    for params, words in (({}, "Missing"), ({"token": token[:-4] + "AAAA"}, "Invalid token")):
        refused = await stored.client.get(f"/media/{stored.job_id}", params=params)
        assert refused.status_code == 401
        assert words in refused.json()["error"]
    bad_key = await stored.client.get(f"/media/{stored.job_id}", headers=stored.auth("sk_no"))
    assert bad_key.status_code == 401
    assert bad_key.json() == {"error": "Invalid API Key"}


async def test_another_accounts_job_and_unknown_jobs_answer_404(
    stored: Playback, other_api_key: str
) -> None:
    for job_id, key in (
        (stored.job_id, other_api_key),
        (str(uuid.uuid4()), stored.key),
        ("not-a-job", stored.key),
    ):
        for path in (f"/media/{job_id}", f"/media/{job_id}/index.m3u8"):
            answer = await stored.client.get(path, headers=stored.auth(key))
            assert answer.status_code == 404, (path, key)
            assert answer.json() == {"error": "Job not found"}


async def test_an_unfinished_job_is_409_and_a_deleted_file_404(playback: Playback) -> None:
    pending = await pending_job(playback.store, playback.account_id)
    answer = await playback.client.get(f"/media/{pending}", headers=playback.auth())
    assert answer.status_code == 409
    assert answer.json() == {"error": "Job is not completed (status: Pending)"}

    version = len(await playback.store.read_stream(job.stream_id(playback.job_id), 1))
    await playback.store.append(
        job.stream_id(playback.job_id),
        [NewEvent(job.FileDeleted(key=f"{playback.job_id}.mp4"))],
        version,
    )
    gone = await playback.client.get(f"/media/{playback.job_id}", headers=playback.auth())
    assert gone.status_code == 404
    assert gone.json() == {"error": "The job's file was deleted"}


async def test_a_file_removed_behind_spools_back_is_a_clear_404(playback: Playback) -> None:
    await playback.storage.delete(f"{playback.job_id}.mp4")
    answer = await playback.client.get(f"/media/{playback.job_id}", headers=playback.auth())
    assert answer.status_code == 404
    assert answer.json() == {"error": "The job's file is gone from storage"}


# -- HLS -----------------------------------------------------------------------------------------


def _uris(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


async def test_hls_playlist_and_segments_carry_the_token_and_replay_the_whole_clip(
    playback: Playback, tmp_path: Path
) -> None:
    token = await playback.token()
    answer = await playback.client.get(
        f"/media/{playback.job_id}/index.m3u8", params={"token": token}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    playlist = answer.text
    assert playlist.startswith("#EXTM3U")
    assert "#EXT-X-ENDLIST" in playlist
    uris = _uris(playlist)
    assert len(uris) >= 2  # 6 s in ~4 s segments
    assert all(uri.endswith(f"?token={token}") for uri in uris)
    for uri in uris:
        segment = await playback.client.get(f"/media/{playback.job_id}/{uri}")
        assert segment.status_code == 200
        assert segment.headers["content-type"] == "video/mp2t"
        assert segment.content[:1] == b"G"  # an MPEG-TS sync byte
    missing = await playback.client.get(
        f"/media/{playback.job_id}/seg99999.ts", params={"token": token}
    )
    assert missing.status_code == 404
    escape = await playback.client.get(
        f"/media/{playback.job_id}/..%2Fsecret_key", params={"token": token}
    )
    assert escape.status_code == 404

    # FFmpeg plays it back over a real port, following the playlist's own URLs.
    async with serve_on_loopback(playback.app, lifespan="off") as port:
        url = f"http://127.0.0.1:{port}/media/{playback.job_id}/index.m3u8?token={token}"
        out = tmp_path / "replayed.mp4"
        proc = await asyncio.create_subprocess_exec(
            *[ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"],
            *["-allowed_extensions", "ALL", "-i", url, "-c", "copy", str(out)],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert abs(media_duration(out) - CLIP_SECONDS) < 0.5
    assert media_streams(out) == ["video", "audio"]


async def test_hls_is_cut_once_and_reused(playback: Playback) -> None:
    first = await playback.client.get(
        f"/media/{playback.job_id}/index.m3u8", headers=playback.auth()
    )
    assert first.status_code == 200
    assert all("token" not in uri for uri in _uris(first.text))  # a key in a header: no token
    folder = services_of(playback.app).media.cache.ready(playback.job_id)
    assert folder is not None
    # The playlist and segments, not `.account`, whose mtime marks when it was last played.
    made = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != ".account"}
    # The object is gone from storage, yet the cut rendition still plays.
    await playback.storage.delete(f"{playback.job_id}.mp4")
    again = await playback.client.get(
        f"/media/{playback.job_id}/index.m3u8", headers=playback.auth()
    )
    assert again.text == first.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != ".account"} == made


async def test_deleting_the_file_removes_its_hls_rendition_and_ends_its_viewers(
    playback: Playback,
) -> None:
    playlist = f"/media/{playback.job_id}/index.m3u8"
    assert (await playback.client.get(playlist, headers=playback.auth())).status_code == 200
    media = services_of(playback.app).media
    folder = media.cache.ready(playback.job_id)
    assert folder is not None
    [held] = [v for k, v in media.viewers.items() if k[0] == playback.job_id]

    deleted = await playback.client.delete(f"/jobs/{playback.job_id}/file", headers=playback.auth())
    assert deleted.status_code == 200, deleted.text
    assert not folder.exists()
    assert list(media.cache.root.iterdir()) == []  # nothing renamed away was left behind
    assert held.session.closing
    assert not any(k[0] == playback.job_id for k in media.viewers)
    again = await playback.client.get(playlist, headers=playback.auth())
    assert again.status_code == 404
    assert again.json() == {"error": "The job's file was deleted"}


async def test_a_file_deleted_in_bulk_leaves_the_hls_cache_and_its_viewers_too(
    playback: Playback, runner: ProjectionRunner, tmp_path: Path
) -> None:
    """The operations reactor deletes the file, in another process as far as the API knows:
    the deletion reaches the API through the log, as a single delete's does."""
    playlist = f"/media/{playback.job_id}/index.m3u8"
    assert (await playback.client.get(playlist, headers=playback.auth())).status_code == 200
    media = services_of(playback.app).media
    folder = media.cache.ready(playback.job_id)
    assert folder is not None
    [held] = [v for k, v in media.viewers.items() if k[0] == playback.job_id]
    await runner.settle("jobs")  # a bulk action finds jobs by their rows

    asked = await playback.client.post(
        "/jobs/actions", json={"action": "delete_file", "filter": {}}, headers=playback.auth()
    )
    assert asked.status_code == 202, asked.text
    assert asked.json()["matched"] == 1
    await runner.settle("operations")  # where the runner finds unfinished operations
    operations = OperationRunner(
        playback.store,
        Settings(data_dir=tmp_path / "reactors", secret_key="test-secret-key"),
        playback.storage,
    )
    try:
        assert not await operations.pass_once()  # nothing left unfinished
    finally:
        await operations.storages.aclose()
    shown = await playback.client.get(
        f"/operations/{asked.json()['operation_id']}", headers=playback.auth()
    )
    assert shown.json()["counts"]["done"] == 1, shown.text

    async def dropped() -> bool:
        return not folder.exists() and held.session.closing

    await until(dropped)
    assert media.cache.ready(playback.job_id) is None
    assert list(media.cache.root.iterdir()) == []
    assert not any(k[0] == playback.job_id for k in media.viewers)
    assert media.cache.account_bytes(playback.account_id) == 0
    again = await playback.client.get(playlist, headers=playback.auth())
    assert again.status_code == 404


async def test_removing_a_rendition_mid_build_stops_the_build(tmp_path: Path) -> None:
    cache = HlsCache(tmp_path / "hls")
    fetching, never = asyncio.Event(), asyncio.Event()

    async def fetch(path: Path) -> None:
        path.write_bytes(b"partial")
        fetching.set()
        await never.wait()  # the source is still downloading when the delete comes

    waiting = asyncio.create_task(cache.ensure("job1", fetch, account_id="acct1"))
    await asyncio.wait_for(fetching.wait(), 10)
    await cache.remove("job1")
    with pytest.raises(HlsRemoved):
        await asyncio.wait_for(waiting, 10)
    assert cache.ready("job1") is None
    assert list(cache.root.iterdir()) == []
    await cache.remove("job1")  # removing what is not there is fine


def test_a_playlist_gets_the_token_on_every_uri() -> None:
    text = '#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\n#EXTINF:4.0,\nseg00000.m4s\n#EXT-X-ENDLIST\n'
    assert playlist_with_token(text, "a.b/c") == (
        '#EXTM3U\n#EXT-X-MAP:URI="init.mp4?token=a.b%2Fc"\n#EXTINF:4.0,\n'
        "seg00000.m4s?token=a.b%2Fc\n#EXT-X-ENDLIST\n"
    )
    assert playlist_with_token(text, None) == text


# -- ranged reads in each storage ------------------------------------------------------------------


async def _ranged_reads(storage: ObjectStorage, clip: Path) -> None:
    data = clip.read_bytes()
    await storage.put_file("media/clip.mp4", clip)
    info = await storage.head("media/clip.mp4")
    assert info is not None and info.size == len(data)
    assert await storage.head("media/none.mp4") is None

    async def read(start: int = 0, end: int | None = None) -> bytes:
        return b"".join([c async for c in storage.read("media/clip.mp4", start, end)])

    assert await read() == data
    assert await read(0, 0) == data[:1]
    assert await read(100, 199) == data[100:200]
    assert await read(len(data) - 10) == data[-10:]
    # Stopping early releases the stream (no hang, no error).
    chunks = storage.read("media/clip.mp4")
    assert await anext(chunks)
    await chunks.aclose()
    with pytest.raises(StorageError):
        await read_missing(storage)


async def read_missing(storage: ObjectStorage) -> None:
    async for _ in storage.read("media/none.mp4"):
        pass


async def test_local_storage_reads_byte_ranges(tmp_path: Path, clip: Path) -> None:
    await _ranged_reads(LocalStorage(tmp_path / "store"), clip)


async def test_s3_storage_reads_byte_ranges(
    s3_storage_url: str, tmp_path: Path, clip: Path
) -> None:
    storage = storage_from_url(s3_storage_url, data_dir=tmp_path)
    try:
        await _ranged_reads(storage, clip)
    finally:
        await storage.close()


async def test_blob_storage_reads_byte_ranges(azurite: AzuriteServer, clip: Path) -> None:
    storage = BlobStorage(
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        endpoint=azurite.endpoint,
        container=f"media-{uuid.uuid4().hex[:8]}",
    )
    try:
        await storage.create_container()
        await _ranged_reads(storage, clip)
    finally:
        await storage.close()
