"""Whose file is whose: keys that cannot collide across accounts or jobs, deletes that remove only
what a job wrote, and a link to every completed job's file, whatever the storage.

Real parts only: the whole cluster in-process over PostgreSQL and Redis, moto's S3 server or a
local folder as the cluster's default storage, FFmpeg-made media served over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest

from spool.adapters.file_links import LINK_SECONDS, file_link, link_is_valid, link_key, signature
from spool.adapters.owned_objects import delete_owned
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage, S3Storage
from spool.domain import job
from spool.keys import issue
from spool.reactors import stages
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer, make_clip, media_duration
from tests.fixtures.s3 import S3Server

PUBLIC_URL = "http://spool.test"
"""The cluster's SPOOL_PUBLIC_URL: its test client's own base, so a Spool link can be followed."""


@pytest.fixture(params=["local", "s3"])
async def shared(
    request: pytest.FixtureRequest, start_cluster: StartCluster, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """A cluster whose default storage (shared by every account) is a folder, or moto's S3."""
    overrides: dict[str, Any] = {"public_url": PUBLIC_URL}
    if request.param == "local":
        overrides["storage_url"] = (tmp_path / "store").as_uri()
    async with start_cluster(**overrides) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def other_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clip unlike the media server's `clip.mp4` (1 s, not 2 s): whose file is whose shows."""
    return make_clip(tmp_path_factory.mktemp("other") / "other.mp4", 1.0)


async def _second_account(cluster: Cluster) -> str:
    """A second plain account's API key, once the API knows it."""
    issued = await issue(cluster.store, name="neighbour", admin=False)
    deadline = time.monotonic() + 30
    while (
        await cluster.client.get("/jobs", headers=cluster.headers(issued.key))
    ).status_code != 200:
        assert time.monotonic() < deadline, "the second key never became usable"
        await _tick()
    return issued.key


async def _tick() -> None:
    await asyncio.sleep(0.1)


async def _submit(cluster: Cluster, key: str, url: str, **options: Any) -> str:
    answer = await cluster.client.post(
        "/jobs", json={"url": url, **options}, headers=cluster.headers(key)
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


async def _done(cluster: Cluster, key: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while True:
        answer = await cluster.client.get(f"/jobs/{job_id}", headers=cluster.headers(key))
        body: dict[str, Any] = answer.json()
        if body["status"] in ("Completed", "Failed"):
            assert body["status"] == "Completed", body
            return body
        assert time.monotonic() < deadline, body
        await _tick()


async def _played(cluster: Cluster, key: str, job_id: str, tmp_path: Path) -> float:
    """The duration of what `/media/{job}` plays to the job's owner."""
    answer = await cluster.client.get(f"/media/{job_id}", headers=cluster.headers(key))
    assert answer.status_code == 200, answer.text
    path = tmp_path / f"{job_id}.mp4"
    path.write_bytes(answer.content)
    return media_duration(path)


async def _linked(cluster: Cluster, link: str, tmp_path: Path) -> float:
    """The duration of what a job's link serves to a client with no API key at all."""
    assert link.startswith(("http://", "https://")), link
    if link.startswith(PUBLIC_URL):
        answer = await cluster.client.get(link)  # a Spool link: served by the API itself
    else:
        async with httpx.AsyncClient() as http:
            answer = await http.get(link)  # presigned: straight from the storage
    assert answer.status_code == 200, answer.text
    path = tmp_path / "linked.mp4"
    path.write_bytes(answer.content)
    return media_duration(path)


async def _stored_keys(cluster: Cluster) -> list[str]:
    return await cluster.storage.list_keys()


# -- two accounts, one folder and file name -------------------------------------------------------


async def test_two_accounts_with_one_name_each_keep_and_read_their_own_file(
    shared: Cluster, media_server: MediaServer, media_dir: Path, other_clip: Path, tmp_path: Path
) -> None:
    cluster = shared
    (media_dir / "other.mp4").write_bytes(other_clip.read_bytes())
    neighbour = await _second_account(cluster)
    mine = await _submit(
        cluster, cluster.key, media_server.url("clip.mp4"), folder="shows", filename="pilot"
    )
    first = await _done(cluster, cluster.key, mine)
    # The neighbour claims the very same folder and name afterwards (as an attacker would).
    theirs = await _submit(
        cluster, neighbour, media_server.url("other.mp4"), folder="shows", filename="pilot"
    )
    second = await _done(cluster, neighbour, theirs)

    assert first["storage_key"] == cluster.key_of("shows/pilot.mp4")
    assert second["storage_key"].endswith("/shows/pilot.mp4")
    assert second["storage_key"] != first["storage_key"]  # each under its own account
    assert sorted(await _stored_keys(cluster)) == sorted(
        [first["storage_key"], second["storage_key"]]
    )
    assert abs(await _played(cluster, cluster.key, mine, tmp_path) - 2.0) < 0.3
    assert abs(await _played(cluster, neighbour, theirs, tmp_path) - 1.0) < 0.3
    assert abs(await _linked(cluster, first["s3_url"], tmp_path) - 2.0) < 0.3
    assert abs(await _linked(cluster, second["s3_url"], tmp_path) - 1.0) < 0.3

    deleted = await cluster.client.delete(
        f"/jobs/{theirs}/file", headers=cluster.headers(neighbour)
    )
    assert deleted.status_code == 200, deleted.text
    assert await _stored_keys(cluster) == [first["storage_key"]]
    assert abs(await _played(cluster, cluster.key, mine, tmp_path) - 2.0) < 0.3
    assert (await cluster.job(mine))["file_deleted"] is False


# -- two jobs of one account, one name ------------------------------------------------------------


async def test_two_jobs_of_one_account_with_one_name_never_overwrite_each_other(
    shared: Cluster, media_server: MediaServer, media_dir: Path, other_clip: Path, tmp_path: Path
) -> None:
    cluster = shared
    (media_dir / "other.mp4").write_bytes(other_clip.read_bytes())
    first_id = await cluster.create(media_server.url("clip.mp4"), folder="shows", filename="pilot")
    first = await _done(cluster, cluster.key, first_id)
    second_id = await cluster.create(
        media_server.url("other.mp4"), folder="shows", filename="pilot"
    )
    second = await _done(cluster, cluster.key, second_id)

    # The name was taken by the first job's file: the second gets the name plus its short id.
    short = second_id.split("-")[0]
    assert first["storage_key"] == cluster.key_of("shows/pilot.mp4")
    assert second["storage_key"] == cluster.key_of(f"shows/pilot [{short}].mp4")
    assert abs(await _played(cluster, cluster.key, first_id, tmp_path) - 2.0) < 0.3
    assert abs(await _played(cluster, cluster.key, second_id, tmp_path) - 1.0) < 0.3
    assert abs(await _linked(cluster, second["s3_url"], tmp_path) - 1.0) < 0.3

    deleted = await cluster.client.delete(f"/jobs/{first_id}/file", headers=cluster.headers())
    assert deleted.status_code == 200, deleted.text
    assert await _stored_keys(cluster) == [second["storage_key"]]
    assert abs(await _played(cluster, cluster.key, second_id, tmp_path) - 1.0) < 0.3
    # The freed name is free again: a third job takes it, and the second keeps its own.
    third_id = await cluster.create(media_server.url("clip.mp4"), folder="shows", filename="pilot")
    third = await _done(cluster, cluster.key, third_id)
    assert third["storage_key"] == cluster.key_of("shows/pilot.mp4")
    events = (
        await cluster.client.get(f"/jobs/{third_id}/events", headers=cluster.headers())
    ).json()["events"]
    completed = next(e for e in events if e["type"] == "JobCompleted")
    media = completed["data"]["objects"][0]
    assert media["key"] == third["storage_key"] and media["size"] == third["file_size"]
    assert media.get("etag") or media.get("version_id")  # what tells this object from a later one


async def test_subtitles_and_thumbnail_follow_the_name_the_media_ended_with(
    cluster: Cluster, media_server: MediaServer
) -> None:
    asked = {"filename": "page", "download_subtitles": True, "download_thumbnail": True}
    first_id = await cluster.create(media_server.url("watch.html"), **asked)
    first = await _done(cluster, cluster.key, first_id)
    second_id = await cluster.create(media_server.url("watch.html"), **asked)
    second = await _done(cluster, cluster.key, second_id)

    short = second_id.split("-")[0]
    names = ("page.mp4", "page.en.vtt", "page.jpg")
    assert sorted(cluster.objects()) == sorted(
        [cluster.in_bucket(n) for n in names]
        + [cluster.in_bucket(n.replace("page", f"page [{short}]")) for n in names]
    )
    assert first["storage_key"] == cluster.key_of("page.mp4")
    assert second["storage_key"] == cluster.key_of(f"page [{short}].mp4")
    async with httpx.AsyncClient() as http:
        for done in (first, second):
            assert (await http.get(done["subtitle_url"])).text.startswith("WEBVTT")
    deleted = await cluster.client.delete(f"/jobs/{second_id}/file", headers=cluster.headers())
    assert deleted.status_code == 200, deleted.text
    assert sorted(cluster.objects()) == sorted(cluster.in_bucket(n) for n in names)


# -- a delete after the object was replaced -------------------------------------------------------


async def test_a_delete_after_the_file_was_replaced_or_removed_is_409_and_removes_nothing(
    shared: Cluster, media_server: MediaServer, tmp_path: Path
) -> None:
    cluster = shared
    job_id = await cluster.create(media_server.url("clip.mp4"), filename="kept")
    done = await _done(cluster, cluster.key, job_id)
    key = done["storage_key"]
    # Someone writes over the object behind Spool's back (another tool with the bucket's keys).
    impostor = tmp_path / "impostor.bin"
    impostor.write_bytes(b"not the job's file")
    await cluster.storage.put_file(key, impostor)

    answer = await cluster.client.delete(f"/jobs/{job_id}/file", headers=cluster.headers())

    assert answer.status_code == 409, answer.text
    assert answer.json() == {
        "error": f"The file at {key} is no longer the one this job wrote (replaced or removed); "
        "nothing was deleted"
    }
    assert b"".join([c async for c in cluster.storage.read(key)]) == b"not the job's file"
    assert (await cluster.job(job_id))["file_deleted"] is False
    assert "FileDeleted" not in await cluster.event_types(job_id)

    await cluster.storage.delete(key)  # and now it is gone altogether
    gone = await cluster.client.delete(f"/jobs/{job_id}/file", headers=cluster.headers())
    assert gone.status_code == 409, gone.text
    assert (await cluster.job(job_id))["file_deleted"] is False


# -- links ----------------------------------------------------------------------------------------


async def test_a_local_link_works_without_a_key_and_not_once_tampered_or_expired(
    start_cluster: StartCluster, media_server: MediaServer, tmp_path: Path
) -> None:
    storage_url = (tmp_path / "store").as_uri()
    async with start_cluster(storage_url=storage_url, public_url=PUBLIC_URL) as cluster:
        job_id = await cluster.create(media_server.url("clip.mp4"), filename="linked")
        done = await _done(cluster, cluster.key, job_id)
        other_id = await cluster.create(media_server.url("clip.mp4"), filename="another")
        await _done(cluster, cluster.key, other_id)
        link = done["s3_url"]
        assert link.startswith(f"{PUBLIC_URL}/files/{job_id}/media?")
        assert "file:" not in link and str(tmp_path) not in link
        played = await cluster.client.get(f"/media/{job_id}", headers=cluster.headers())

        fetched = await cluster.client.get(link)  # no API key at all
        assert fetched.status_code == 200, fetched.text
        assert fetched.content == played.content
        assert fetched.headers["content-disposition"].startswith("inline")
        saved = await cluster.client.get(link + "&download=true")
        assert saved.headers["content-disposition"].startswith("attachment")
        ranged = await cluster.client.get(link, headers={"Range": "bytes=0-99"})
        assert ranged.status_code == 206 and ranged.content == played.content[:100]

        query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
        signature, expires = query["signature"], int(query["expires"])
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        tampered = [
            f"/files/{job_id}/media?expires={expires}&signature={flipped}",
            f"/files/{job_id}/media?expires={expires + 3600}&signature={signature}",
            f"/files/{other_id}/media?expires={expires}&signature={signature}",
            f"/files/{job_id}/thumbnail?expires={expires}&signature={signature}",
        ]
        for url in tampered:
            refused = await cluster.client.get(url)
            assert refused.status_code == 403, url
            assert refused.json() == {"error": "Invalid or expired link"}
        for url, status in [
            (f"/files/{job_id}/media", 400),  # no expiry, no signature
            (f"/files/{job_id}/media?expires=soon&signature={signature}", 400),
            (f"/files/{job_id}/secrets?expires={expires}&signature={signature}", 404),
            (f"/files/not-a-job/media?expires={expires}&signature={signature}", 404),
        ]:
            bad = await cluster.client.get(url)
            assert bad.status_code == status, (url, bad.text)
            assert set(bad.json()) == {"error"}, bad.text

        # A link made a day and a second ago has expired: the clock is the caller's to give.
        key = link_key(cluster.settings.resolved_secret_key())
        storage = LocalStorage(tmp_path / "store")
        stale = await file_link(
            storage,
            job_id=job_id,
            kind="media",
            object_key=done["storage_key"],
            public_url=PUBLIC_URL,
            key=key,
            now=time.time() - LINK_SECONDS - 1,
        )
        expired = await cluster.client.get(stale)
        assert expired.status_code == 403
        assert expired.json() == {"error": "Invalid or expired link"}

        deleted = await cluster.client.delete(f"/jobs/{job_id}/file", headers=cluster.headers())
        assert deleted.status_code == 200
        assert (await cluster.client.get(link)).status_code == 403  # nothing behind it now


def test_a_link_signature_holds_until_its_expiry_and_names_one_file() -> None:
    key = link_key("server-secret")
    args = {"job_id": "j1", "object_key": "accounts/a/x.mp4", "expires": 1_000}
    good = signature(key, "j1", "accounts/a/x.mp4", 1_000)
    assert link_is_valid(key, **args, given=good, now=999.0)
    assert not link_is_valid(key, **args, given=good, now=1_000.0)
    assert not link_is_valid(key, **{**args, "object_key": "accounts/b/x.mp4"}, given=good, now=1)
    assert not link_is_valid(link_key("another-secret"), **args, given=good, now=1)


# -- the upload stage's naming rule, against a real folder and moto -------------------------------


def _state(tmp_path: Path, job_id: str, filename: str = "pilot") -> job.JobState:
    output = tmp_path / f"{job_id}.mp4"
    output.write_bytes(job_id.encode() * 100)
    events = job.create(
        job_id=job_id,
        account_id="acct",
        url="http://m/a.mp4",
        options=job.JobOptions(filename=filename),
    )
    state = job.fold([(e, datetime.now(UTC), i + 1) for i, e in enumerate(events)])
    assert state is not None
    output_file = job.MediaFile(path=str(output), kind="av", size=output.stat().st_size)
    state = msgspec.structs.replace(state, output=output_file)
    return state


async def _upload(storage: Any, state: job.JobState) -> job.JobCompleted:
    return await stages.upload(
        state, "n1", storage, lambda _: None, asyncio.Event(), prefix="accounts/acct"
    )


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_retry_of_the_same_job_rewrites_its_own_object_and_others_get_a_suffix(
    backend: str, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    storage: Any = (
        LocalStorage(tmp_path / "store")
        if backend == "local"
        else S3Storage(
            bucket=s3_bucket,
            endpoint_url=s3_server.endpoint_url,
            access_key=s3_server.access_key,
            secret_key=s3_server.secret_key,
        )
    )
    a = _state(tmp_path, "aaaaaaaa-0000-4000-8000-000000000001")
    b = _state(tmp_path, "bbbbbbbb-0000-4000-8000-000000000002")
    try:
        first = await _upload(storage, a)
        # Another attempt of job a (its first completion was never recorded) muxed anew.
        assert a.output is not None
        Path(a.output.path).write_bytes(b"remuxed" * 100)
        again = await _upload(storage, a)
        other = await _upload(storage, b)
        assert first.key == again.key == "accounts/acct/pilot.mp4"
        assert other.key == "accounts/acct/pilot [bbbbbbbb].mp4"
        assert sorted(await storage.list_keys()) == [other.key, first.key]

        # A clean-up of job a's first attempt (its object was since rewritten) leaves it alone;
        # one with the current figures removes it, and never b's object.
        assert await delete_owned(storage, first.objects, a.job_id) == [first.key]
        assert await delete_owned(storage, again.objects, b.job_id) == [again.key]
        assert await delete_owned(storage, again.objects, a.job_id) == []
        assert await storage.list_keys() == [other.key]
    finally:
        await storage.close()


def test_the_public_url_comes_from_the_flag_the_environment_or_the_apis_own_address() -> None:
    env = {"SPOOL_PUBLIC_URL": "https://spool.example.com/"}
    assert Settings.from_env(env).resolved_public_url() == "https://spool.example.com"
    flagged = Settings.from_env(env, public_url="https://media.example.com")
    assert flagged.resolved_public_url() == "https://media.example.com"
    assert Settings.from_env({}, port=9000).resolved_public_url() == "http://127.0.0.1:9000"
    assert Settings.from_env({}, host="::1").resolved_public_url() == "http://[::1]:8081"
