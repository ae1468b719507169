"""The HLS cache's bounds: its byte cap and eviction order, its build slots, the bytes each
account holds in it (`GET /usage`), and what a restart finds on disk.

Real parts: FFmpeg-made clips stored in moto's S3 server, cut into HLS by FFmpeg through the
API over the run's own database; the slots are observed with sources that hold their bytes back
until the test lets them go.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from spool.adapters.event_store import EventStore
from spool.adapters.media_cache import PLAYLIST, HlsCache
from spool.adapters.settings import Settings
from spool.adapters.storage import ObjectStorage, storage_from_url
from spool.api.app import create_app
from spool.api.health import PROCESS_HEADER
from spool.api.services import services_of
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.media import make_clip
from tests.fixtures.processes import SpoolProcesses
from tests.media_helpers import finished_job

CLIP_SECONDS = 2.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s H.264/AAC MP4 (about 210 kB; its HLS rendition about 220 kB)."""
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", CLIP_SECONDS)


@dataclass
class Account:
    key: str
    account_id: str

    def auth(self) -> dict[str, str]:
        return {"x-api-key": self.key}


@dataclass
class Tenants:
    """Two accounts with finished jobs on moto S3, and APIs over one data dir on demand."""

    store: EventStore
    storage: ObjectStorage
    clip: Path
    data_dir: Path
    alice: Account
    bob: Account

    @property
    def root(self) -> Path:
        return self.data_dir / "media-cache" / "hls"

    async def job(self, account: Account) -> str:
        return await finished_job(
            self.store, self.storage, account.account_id, self.clip, duration=CLIP_SECONDS
        )

    @contextlib.asynccontextmanager
    async def api(self, **settings: Any) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
        """One API process's app over the data dir; leaving it is that process stopping."""
        app = create_app(
            pool=self.store.pool,
            store=self.store,
            settings=Settings(
                data_dir=self.data_dir,
                secret_key="test-secret-key",
                rate_limit=100_000,
                **settings,
            ),
            storage=self.storage,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://spool.test", timeout=60
        ) as client:
            yield app, client
        await services_of(app).media.aclose()
        await services_of(app).viewers.aclose()


@pytest.fixture
async def tenants(
    store: EventStore, runner: ProjectionRunner, s3_storage_url: str, tmp_path: Path, clip: Path
) -> AsyncIterator[Tenants]:
    data_dir = tmp_path / "data"
    storage = storage_from_url(s3_storage_url, data_dir=data_dir)
    accounts = []
    for name in ("alice", "bob"):
        issued = await issue(store, name=f"{name}-{uuid.uuid4().hex[:6]}", admin=False)
        await runner.wait_until("api_keys", issued.at)
        accounts.append(Account(issued.key, issued.account_id))
    yield Tenants(store, storage, clip, data_dir, *accounts)
    await storage.close()


def on_disk(root: Path) -> int:
    """Every byte under the cache's folder, temporary folders included."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def play(client: httpx.AsyncClient, account: Account, job_id: str) -> None:
    """What a player does: the playlist, then every segment it lists."""
    playlist = await client.get(f"/media/{job_id}/index.m3u8", headers=account.auth())
    assert playlist.status_code == 200, playlist.text
    uris = [line for line in playlist.text.splitlines() if line and not line.startswith("#")]
    assert uris
    for uri in uris:
        segment = await client.get(f"/media/{job_id}/{uri}", headers=account.auth())
        assert segment.status_code == 200, segment.text
        assert segment.content[:1] == b"G"  # an MPEG-TS sync byte


async def hls_cache_bytes(client: httpx.AsyncClient, account: Account) -> int:
    answer = await client.get("/usage", headers=account.auth())
    assert answer.status_code == 200, answer.text
    held: int = answer.json()["hls_cache_bytes"]
    return held


# -- the cap ---------------------------------------------------------------------------------------


async def test_many_builds_keep_the_cache_under_its_cap_and_evict_the_least_recently_played_first(
    tenants: Tenants,
) -> None:
    cap = 1 << 20  # about four renditions of the clip
    favourite = await tenants.job(tenants.alice)
    others = [await tenants.job(tenants.alice) for _ in range(6)]
    async with tenants.api(hls_cache_bytes=cap) as (_, client):
        played: list[str] = []
        for job_id in others:
            await play(client, tenants.alice, favourite)  # played again before every new one
            await play(client, tenants.alice, job_id)
            played.append(job_id)
            assert on_disk(tenants.root) <= cap
            assert (tenants.root / favourite / PLAYLIST).is_file()
            gone = [j for j in played if not (tenants.root / j).exists()]
            assert gone == played[: len(gone)]  # the least recently played went first
        assert len(gone) >= 3  # the cap was really reached, again and again
        assert await hls_cache_bytes(client, tenants.alice) == on_disk(tenants.root)

        # An evicted rendition plays again (cut anew), and the cap still holds.
        await play(client, tenants.alice, others[0])
        assert (tenants.root / others[0] / PLAYLIST).is_file()
        assert on_disk(tenants.root) <= cap


async def test_one_account_playing_many_files_evicts_its_own_renditions_not_anothers(
    tenants: Tenants,
) -> None:
    cap = 1 << 20  # about four renditions of the clip
    bobs = await tenants.job(tenants.bob)
    alices = [await tenants.job(tenants.alice) for _ in range(6)]
    async with tenants.api(hls_cache_bytes=cap) as (_, client):
        await play(client, tenants.bob, bobs)  # and never again: the least recently played
        for job_id in alices:
            await play(client, tenants.alice, job_id)
            assert on_disk(tenants.root) <= cap
            assert (tenants.root / bobs / PLAYLIST).is_file()
        gone = [j for j in alices if not (tenants.root / j).exists()]
        assert gone == alices[: len(gone)]
        assert len(gone) >= 2
        assert await hls_cache_bytes(client, tenants.bob) == on_disk(tenants.root / bobs)


async def test_a_file_larger_than_the_whole_cache_is_refused_hls_but_plays_progressively(
    tenants: Tenants,
) -> None:
    job_id = await tenants.job(tenants.alice)
    async with tenants.api(hls_cache_bytes=100_000) as (_, client):
        refused = await client.get(f"/media/{job_id}/index.m3u8", headers=tenants.alice.auth())
        assert refused.status_code == 409
        assert "larger than the HLS cache" in refused.json()["error"]
        assert on_disk(tenants.root) == 0
        whole = await client.get(f"/media/{job_id}", headers=tenants.alice.auth())
        assert whole.status_code == 200
        assert whole.content == tenants.clip.read_bytes()


# -- build slots -----------------------------------------------------------------------------------


class HeldSources:
    """Sources that write the clip only when the test lets each go, counting builds at once."""

    def __init__(self, clip: Path) -> None:
        self.clip = clip
        self.started: dict[str, asyncio.Event] = {}
        self.go: dict[str, asyncio.Event] = {}
        self.now: Counter[str] = Counter()
        self.peak = 0
        self.peak_of: Counter[str] = Counter()

    def fetch(self, name: str, account_id: str) -> Callable[[Path], Awaitable[None]]:
        self.started[name], self.go[name] = asyncio.Event(), asyncio.Event()

        async def fetch(path: Path) -> None:
            self.now[account_id] += 1
            self.peak = max(self.peak, self.now.total())
            self.peak_of[account_id] = max(self.peak_of[account_id], self.now[account_id])
            self.started[name].set()
            try:
                await self.go[name].wait()
                await asyncio.to_thread(shutil.copyfile, self.clip, path)
            finally:
                self.now[account_id] -= 1

        return fetch

    async def started_all(self, *names: str) -> None:
        await asyncio.wait_for(asyncio.gather(*(self.started[n].wait() for n in names)), 30)


async def test_builds_at_once_never_exceed_the_limit_and_one_account_cannot_take_every_slot(
    tmp_path: Path, clip: Path
) -> None:
    cache = HlsCache(tmp_path / "hls", max_builds=3, max_builds_per_account=2, build_wait=60)
    sources = HeldSources(clip)
    alice = [f"alice{i}" for i in range(5)]
    builds = [
        asyncio.create_task(cache.ensure(n, sources.fetch(n, "alice"), account_id="alice"))
        for n in alice
    ]
    await sources.started_all("alice0", "alice1")
    # Alice asked for five builds; Bob's still gets a slot of its own.
    for name in ("bob0", "bob1"):
        builds.append(
            asyncio.create_task(cache.ensure(name, sources.fetch(name, "bob"), account_id="bob"))
        )
    await sources.started_all("bob0")
    assert cache.slots.running == {"alice": 2, "bob": 1}
    assert not any(sources.started[n].is_set() for n in ("alice2", "alice3", "alice4", "bob1"))

    # Each build that ends lets exactly one waiting build start, never more.
    order = ["alice0", "bob0", "alice1", "alice2", "bob1", "alice3", "alice4"]
    for name in order:
        await sources.started_all(name)
        sources.go[name].set()
    results = await asyncio.wait_for(asyncio.gather(*builds, return_exceptions=True), 120)
    assert all(isinstance(r, Path) for r in results), results
    assert sources.peak == 3
    assert sources.peak_of == {"alice": 2, "bob": 1}
    assert cache.slots.running == {}
    for name in [*alice, "bob0", "bob1"]:
        assert cache.ready(name) is not None, name
    await cache.aclose()


async def test_past_its_build_slots_an_account_gets_429_with_retry_after_and_others_still_play(
    tenants: Tenants,
) -> None:
    waiting_job, other_job = await tenants.job(tenants.alice), await tenants.job(tenants.alice)
    bobs_job = await tenants.job(tenants.bob)
    async with tenants.api(hls_builds_per_account=1, hls_build_wait=0.5) as (app, client):
        cache = services_of(app).media.cache
        sources = HeldSources(tenants.clip)
        # One of Alice's builds holds her only slot: its source is still arriving.
        holding = asyncio.create_task(
            cache.ensure(
                other_job,
                sources.fetch(other_job, tenants.alice.account_id),
                account_id=tenants.alice.account_id,
            )
        )
        await sources.started_all(other_job)

        refused = await client.get(f"/media/{waiting_job}/index.m3u8", headers=tenants.alice.auth())
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "5"
        assert "HLS builds of this account are running" in refused.json()["error"]
        assert not (tenants.root / waiting_job).exists()

        await play(client, tenants.bob, bobs_job)  # Bob is not held up by Alice's builds

        sources.go[other_job].set()
        await asyncio.wait_for(holding, 60)
        await play(client, tenants.alice, waiting_job)  # her slot is free again


# -- per account -----------------------------------------------------------------------------------


async def test_usage_shows_the_accounts_hls_cache_bytes_and_never_another_accounts(
    tenants: Tenants,
) -> None:
    alices, bobs = await tenants.job(tenants.alice), await tenants.job(tenants.bob)
    async with tenants.api() as (_, client):
        assert await hls_cache_bytes(client, tenants.alice) == 0
        await play(client, tenants.alice, alices)
        alice_bytes = on_disk(tenants.root / alices)
        assert alice_bytes > 100_000
        assert await hls_cache_bytes(client, tenants.alice) == alice_bytes
        assert await hls_cache_bytes(client, tenants.bob) == 0

        await play(client, tenants.bob, bobs)
        assert await hls_cache_bytes(client, tenants.bob) == on_disk(tenants.root / bobs)
        assert await hls_cache_bytes(client, tenants.alice) == alice_bytes

        deleted = await client.delete(f"/jobs/{alices}/file", headers=tenants.alice.auth())
        assert deleted.status_code == 200, deleted.text
        assert await hls_cache_bytes(client, tenants.alice) == 0
        assert await hls_cache_bytes(client, tenants.bob) == on_disk(tenants.root / bobs)


# -- restart ---------------------------------------------------------------------------------------


async def test_a_restart_counts_the_renditions_on_disk_and_removes_unfinished_builds(
    tenants: Tenants,
) -> None:
    alices, bobs = await tenants.job(tenants.alice), await tenants.job(tenants.bob)
    async with tenants.api() as (_, client):
        await play(client, tenants.alice, alices)
        await play(client, tenants.bob, bobs)
        alice_bytes = await hls_cache_bytes(client, tenants.alice)
        bob_bytes = await hls_cache_bytes(client, tenants.bob)
    cut = (tenants.root / alices / PLAYLIST).stat().st_mtime_ns

    # What a process killed mid-build leaves: its temporary folder, named with its pid.
    crashed = await asyncio.create_subprocess_exec("true")
    await crashed.wait()
    half = tenants.root / f".build-{uuid.uuid4()}-{crashed.pid}-0badc0de"
    half.mkdir()
    (half / "source").write_bytes(b"\0" * 50_000)
    (half / "seg00000.ts").write_bytes(b"G" * 1_000)
    # A folder that is no finished rendition of any account.
    stray = tenants.root / "no-account"
    stray.mkdir()
    (stray / PLAYLIST).write_text("#EXTM3U\n")
    # Another API process's build, still running, is left alone.
    alive = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        running = tenants.root / f".build-{uuid.uuid4()}-{alive.pid}-0badc0de"
        running.mkdir()
        (running / "source").write_bytes(b"\0" * 1_000)

        async with tenants.api() as (app, client):
            assert await hls_cache_bytes(client, tenants.alice) == alice_bytes
            assert await hls_cache_bytes(client, tenants.bob) == bob_bytes
            assert not half.exists()
            assert not stray.exists()
            assert running.exists()
            cache = services_of(app).media.cache
            assert cache.held_bytes == on_disk(tenants.root) - on_disk(running)
            await play(client, tenants.alice, alices)
            assert (tenants.root / alices / PLAYLIST).stat().st_mtime_ns == cut  # not cut again
    finally:
        alive.kill()
        await alive.wait()


async def test_two_api_processes_on_one_folder_share_its_cap_and_each_accounts_bytes(
    tenants: Tenants,
) -> None:
    cap = 1 << 20  # about four renditions of the clip
    jobs = [await tenants.job(tenants.alice) for _ in range(6)]
    async with (
        tenants.api(hls_cache_bytes=cap) as (_, one),
        tenants.api(hls_cache_bytes=cap) as (_, two),
    ):
        for i, job_id in enumerate(jobs):  # the processes take turns, as a load balancer does
            await play(one if i % 2 == 0 else two, tenants.alice, job_id)
            assert on_disk(tenants.root) <= cap
        gone = [j for j in jobs if not (tenants.root / j).exists()]
        assert gone == jobs[: len(gone)]  # the least recently played, whichever process cut it
        assert len(gone) >= 2
        held = on_disk(tenants.root)
        assert await hls_cache_bytes(one, tenants.alice) == held
        assert await hls_cache_bytes(two, tenants.alice) == held
        assert await hls_cache_bytes(two, tenants.bob) == 0


async def test_spool_api_processes_keep_the_cap_count_each_account_and_recount_after_a_restart(
    tenants: Tenants, database_url: str, redis_url: str, s3_storage_url: str, tmp_path: Path
) -> None:
    cap = 1 << 20  # about four renditions of the clip
    jobs = [await tenants.job(tenants.alice) for _ in range(6)]
    procs = SpoolProcesses(
        tmp_path / "procs",
        {
            "SPOOL_DATABASE_URL": database_url,
            "SPOOL_REDIS_URL": redis_url,
            "SPOOL_STORAGE_URL": s3_storage_url,
            "SPOOL_DATA_DIR": str(tenants.data_dir),
            "SPOOL_SECRET_KEY": "test-secret-key",
            "SPOOL_HLS_CACHE_BYTES": str(cap),
        },
    )
    (tmp_path / "procs").mkdir()
    try:
        with procs.kept_logs():
            url = await asyncio.to_thread(procs.api, "--processes", "2")
            for job_id in jobs:  # a connection each: the two processes share the plays
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    await play(client, tenants.alice, job_id)
                assert on_disk(tenants.root) <= cap
            gone = [j for j in jobs if not (tenants.root / j).exists()]
            assert gone == jobs[: len(gone)]
            assert len(gone) >= 2
            held = on_disk(tenants.root)
            answered: set[str] = set()
            while len(answered) < 2:  # whichever process answers, the same count
                assert len(answered) < 200
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    # One connection stays with one process: /health names it.
                    process = (await client.get("/health")).headers[PROCESS_HEADER]
                    assert await hls_cache_bytes(client, tenants.alice) == held
                    assert await hls_cache_bytes(client, tenants.bob) == 0
                answered.add(process)

            await asyncio.to_thread(procs.stop, "api")
            url = await asyncio.to_thread(procs.api, "--processes", "2")
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                assert await hls_cache_bytes(client, tenants.alice) == held
                await play(client, tenants.alice, jobs[0])  # evicted before: cut anew
                assert on_disk(tenants.root) <= cap
                assert await hls_cache_bytes(client, tenants.alice) == on_disk(tenants.root)
    finally:
        await asyncio.to_thread(procs.stop_all)
