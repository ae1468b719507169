"""The per-account download archive: a job of an item the account already fetched is skipped,
naming the job that holds it, unless forced or the item was removed from the archive; the
archive is listed, searched and paged, and no account's archive touches another's.

Real parts only: PostgreSQL, Redis, moto's S3, FFmpeg-made media on a loopback HTTP server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from yt_dlp.utils import make_archive_id

from spool.domain import archive, job
from spool.replay import load_timeline
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer, make_clip
from tests.fixtures.waiting import until


@pytest.fixture
async def cluster(start_cluster: StartCluster) -> AsyncIterator[Cluster]:
    """A running cluster whose node skips what an account's archive holds (the harness's
    other clusters do not: their tests fetch one clip again and again)."""
    async with start_cluster(archive_skips=True) as c:
        yield c


async def _archive(cluster: Cluster, key: str | None = None, **params: Any) -> dict[str, Any]:
    answer = await cluster.client.get("/archive", params=params, headers=cluster.headers(key))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _archived(cluster: Cluster, job_id: str, key: str | None = None) -> dict[str, Any]:
    """The archive item `job_id` holds, once the archive shows it."""

    async def held() -> dict[str, Any] | None:
        items = (await _archive(cluster, key, limit=100))["items"]
        return next((i for i in items if i["job_id"] == job_id), None)

    return await until(held, seconds=30)


async def _fetched(cluster: Cluster, url: str, key: str | None = None, **options: Any) -> str:
    """A job of `url` (as `key`'s account) that completed and is in its archive; its id."""
    answer = await cluster.client.post(
        "/jobs", json={"url": url, **options}, headers=cluster.headers(key)
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    done = await _wait(cluster, job_id, key)
    assert done["status"] == "Completed", done
    await _archived(cluster, job_id, key)
    return job_id


async def _wait(cluster: Cluster, job_id: str, key: str | None = None) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        answer = await cluster.client.get(f"/jobs/{job_id}", headers=cluster.headers(key))
        body: dict[str, Any] = answer.json()
        return body if body["status"] in job.TERMINAL else None

    return await until(ended, seconds=90)


def _remove(cluster: Cluster, archive_id: str, key: str | None = None) -> Any:
    return cluster.client.delete(
        f"/archive/{quote(archive_id, safe='')}", headers=cluster.headers(key)
    )


def _files(media_dir: Path, *names: str) -> None:
    for name in names:
        if not (media_dir / name).exists():
            (media_dir / name).parent.mkdir(parents=True, exist_ok=True)
            make_clip(media_dir / name, 1.0)


async def test_the_same_item_submitted_twice_is_skipped_naming_the_first_job(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url = media_server.url("clip.mp4")
    first = await _fetched(cluster, url)

    second = await cluster.create(url)
    skipped = await _wait(cluster, second)

    assert skipped["status"] == "Skipped", skipped
    assert skipped["step"] == "Finished"
    assert skipped["archived_by_job"] == first
    assert skipped["archive_id"] == f"generic {url}"
    assert skipped["s3_url"] is None and skipped["storage_key"] is None
    types = await cluster.event_types(second)
    # Decided right after the info was extracted: no file fetched, muxed or uploaded.
    assert types == ["JobCreated", "StageStarted", "JobSkipped"]
    assert cluster.objects() == [cluster.in_bucket(f"clip [{first.split('-')[0]}].mp4")]
    assert (await cluster.job(first))["archived_by_job"] is None
    timeline = await load_timeline(cluster.store, "job", job.stream_id(second))
    assert timeline is not None and timeline.status == "Skipped"
    assert f"fetched by job {first}" in timeline.entries[-1].note


async def test_force_downloads_an_archived_item_again_and_the_archive_names_the_new_job(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url = media_server.url("clip.mp4")
    first = await _fetched(cluster, url)

    again = await cluster.create(url, force=True)
    done = await _wait(cluster, again)

    assert done["status"] == "Completed", done
    assert "JobSkipped" not in await cluster.event_types(again)
    item = await _archived(cluster, again)
    assert item["archive_id"] == f"generic {url}"
    assert [i["job_id"] for i in (await _archive(cluster))["items"]] == [again]
    assert first != again


async def test_an_item_removed_from_the_archive_is_fetched_again(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url = media_server.url("clip.mp4")
    first = await _fetched(cluster, url)
    archive_id = f"generic {url}"

    removed = await _remove(cluster, archive_id)

    assert removed.status_code == 200, removed.text
    assert removed.json() == {"archive_id": archive_id, "job_id": first, "removed": True}

    async def gone() -> bool:
        return not (await _archive(cluster))["items"]

    await until(gone)
    again = await cluster.create(url)
    done = await _wait(cluster, again)
    assert done["status"] == "Completed", done
    assert (await _archived(cluster, again))["archive_id"] == archive_id
    # The removal is a fact on the account's archive stream.
    archive_events = await cluster.store.read_stream(archive.stream_id(cluster.account_id))
    assert [e.type for e in archive_events] == ["ArchiveItemRemoved"]
    timeline = await load_timeline(cluster.store, "archive", archive.stream_id(cluster.account_id))
    assert timeline is not None
    assert [e.note for e in timeline.entries] == [
        f"{archive_id!r} removed by key {archive_events[0].metadata.actor} (user): "
        "its next job downloads again"
    ]


async def test_a_different_file_under_the_same_name_at_another_url_is_not_skipped(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    # yt-dlp's own archive id for both is `generic clip`: Spool names them by URL.
    _files(media_dir, "other/clip.mp4")
    first = await _fetched(cluster, media_server.url("clip.mp4"))

    other = await cluster.create(media_server.url("other/clip.mp4"))
    done = await _wait(cluster, other)

    assert done["status"] == "Completed", done
    assert done["archived_by_job"] is None
    await _archived(cluster, other)
    items = (await _archive(cluster))["items"]
    assert {i["archive_id"]: i["job_id"] for i in items} == {
        f"generic {media_server.url('clip.mp4')}": first,
        f"generic {media_server.url('other/clip.mp4')}": other,
    }
    assert {(i["extractor"], i["item_id"]) for i in items} == {("generic", "clip")}


async def test_another_account_neither_sees_nor_deletes_my_archive_nor_is_skipped_by_it(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url = media_server.url("clip.mp4")
    mine = await _fetched(cluster, url)
    other = cluster.admin_key  # another account's key

    assert (await _archive(cluster, other))["items"] == []
    refused = await _remove(cluster, f"generic {url}", other)
    assert refused.status_code == 404, refused.text
    assert refused.json() == {"error": "Archive item not found"}

    theirs = await cluster.client.post("/jobs", json={"url": url}, headers=cluster.headers(other))
    their_job = theirs.json()["job_id"]
    done = await _wait(cluster, their_job, other)

    assert done["status"] == "Completed", done
    await _archived(cluster, their_job, other)
    assert [i["job_id"] for i in (await _archive(cluster, other))["items"]] == [their_job]
    assert [i["job_id"] for i in (await _archive(cluster))["items"]] == [mine]


async def test_get_archive_lists_newest_first_searches_and_pages(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    names = ("shelf/one.mp4", "shelf/two.mp4", "shelf/three.mp4")
    _files(media_dir, *names)
    made = [await _fetched(cluster, media_server.url(name)) for name in names]

    first = await _archive(cluster, limit=2)
    second = await _archive(cluster, limit=2, cursor=first["next_cursor"])

    assert [i["job_id"] for i in first["items"] + second["items"]] == made[::-1]
    assert second["next_cursor"] is None
    item = first["items"][0]
    assert item == {
        "archive_id": f"generic {media_server.url('shelf/three.mp4')}",
        "extractor": "generic",
        "item_id": "three",
        "title": "three",
        "url": media_server.url("shelf/three.mp4"),
        "job_id": made[2],
        "archived_at": item["archived_at"],
    }
    assert [i["job_id"] for i in (await _archive(cluster, q="TWO"))["items"]] == [made[1]]
    assert len((await _archive(cluster, q="shelf/"))["items"]) == 3
    assert (await _archive(cluster, q="100%_"))["items"] == []
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "not a cursor"}):
        answer = await cluster.client.get("/archive", params=bad, headers=cluster.headers())
        assert answer.status_code == 400, (bad, answer.text)
        assert "error" in answer.json()


async def test_deleting_an_id_not_in_the_archive_is_404(cluster: Cluster) -> None:
    for archive_id in ("youtube nothing", "generic http://127.0.0.1/none.mp4", "%ff"):
        answer = await _remove(cluster, archive_id)
        assert answer.status_code == 404, answer.text
        assert answer.json() == {"error": "Archive item not found"}


@pytest.mark.parametrize(
    ("extractor", "item_id", "url", "expected"),
    [
        ("Youtube", "dQw4w9WgXcQ", "https://www.youtube.com/watch?v=dQw4w9WgXcQ", None),
        ("Vimeo", "76979871", "https://vimeo.com/76979871", None),
        (
            "Generic",
            "clip",
            "HTTP://Media.Example:80/a/clip.mp4#t=3",
            "generic http://media.example/a/clip.mp4",
        ),
        (
            "Generic",
            "clip",
            "https://media.example:8443/b/clip.mp4?x=1",
            "generic https://media.example:8443/b/clip.mp4?x=1",
        ),
        ("Generic", "x", "https://media.example", "generic https://media.example/"),
    ],
)
def test_archive_ids_are_yt_dlps_but_a_generic_item_is_named_by_its_url(
    extractor: str, item_id: str, url: str, expected: str | None
) -> None:
    assert archive.archive_id(extractor, item_id, url) == (
        expected or make_archive_id(extractor, item_id)
    )
