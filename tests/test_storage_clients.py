"""The storage clients a node keeps: one per storage, reused by every upload, closed at stop.

Against the in-process cluster, moto's real S3 server on loopback and the media server. A client
is counted where it is made (`S3Storage.clients_opened`, `AccountStorages.built`): moto answers
every request with `Connection: close`, so the wire cannot tell one client from many.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from spool.adapters.account_storage import AccountStorages
from spool.adapters.read_models import all_projections
from spool.adapters.storage import S3Storage
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.s3 import S3Server
from tests.test_user_storage import account_of, projected, s3_body


@pytest.fixture
async def lean(start_cluster: StartCluster) -> AsyncIterator[Cluster]:
    """A cluster without a worker node, for the tests of `AccountStorages` alone."""
    async with start_cluster(with_node=False) as c:
        yield c


@pytest.fixture
def user_bucket(s3_server: S3Server) -> str:
    return another_bucket(s3_server)


def keys_in(s3: S3Server, bucket: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def another_bucket(s3: S3Server) -> str:
    name = f"user-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=name)
    return name


async def completed(cluster: Cluster, *job_ids: str) -> None:
    for job_id in job_ids:
        done = await cluster.wait(job_id, "Completed", "Failed", "Cancelled", seconds=90)
        assert done["status"] == "Completed", done


async def post_job(cluster: Cluster, url: str, **options: Any) -> str:
    answer = await cluster.client.post(
        "/jobs", json={"url": url, **options}, headers=cluster.headers()
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


async def test_a_nodes_uploads_to_the_default_storage_share_one_client(
    cluster: Cluster, media_server: MediaServer
) -> None:
    assert isinstance(cluster.storage, S3Storage)
    # Submitted together: the uploads overlap on the node's one event loop, and one client.
    jobs = [
        await cluster.create(media_server.url("clip.mp4"), filename=f"clip-{n}") for n in range(3)
    ]
    await completed(cluster, *jobs)
    assert sorted(cluster.objects()) == [cluster.in_bucket(f"clip-{n}.mp4") for n in range(3)]
    assert cluster.storage.clients_opened == 1


async def test_jobs_that_name_the_same_storage_of_their_own_share_one_client(
    cluster: Cluster, s3_server: S3Server, user_bucket: str, media_server: MediaServer
) -> None:
    # Each request seals the credentials apart (another ciphertext each time): the node still
    # sees one storage, as whom and where are the same.
    storage = {"provider": "s3", **s3_body(s3_server, user_bucket, folder_prefix="own")}
    jobs = [
        await post_job(cluster, media_server.url("clip.mp4"), filename=f"own-{n}", storage=storage)
        for n in range(3)
    ]
    await completed(cluster, *jobs)
    assert keys_in(s3_server, user_bucket) == [f"own/own-{n}.mp4" for n in range(3)]
    assert cluster.objects() == []
    assert cluster.node is not None
    assert cluster.node.storages.built == 1
    [held] = cluster.node.storages.held()
    assert isinstance(held, S3Storage) and held.clients_opened == 1


async def test_a_changed_storage_takes_the_very_next_upload(
    cluster: Cluster, s3_server: S3Server, user_bucket: str, media_server: MediaServer
) -> None:
    answer = await cluster.client.post(
        "/user/s3", json=s3_body(s3_server, user_bucket), headers=cluster.headers()
    )
    assert answer.status_code == 201, answer.text
    await projected(cluster)
    first = await cluster.create(media_server.url("clip.mp4"), filename="before")
    await completed(cluster, first)
    assert keys_in(s3_server, user_bucket) == ["before.mp4"]

    # A new bucket, a second after the first upload went to the old one.
    moved = another_bucket(s3_server)
    answer = await cluster.client.post(
        "/user/s3", json=s3_body(s3_server, moved), headers=cluster.headers()
    )
    assert answer.status_code == 201, answer.text
    await projected(cluster)
    second = await cluster.create(media_server.url("clip.mp4"), filename="after")
    await completed(cluster, second)
    assert keys_in(s3_server, moved) == ["after.mp4"]
    assert keys_in(s3_server, user_bucket) == ["before.mp4"]

    # Back to the default: the next upload goes there.
    assert (await cluster.client.delete("/user/s3", headers=cluster.headers())).status_code == 200
    await projected(cluster)
    third = await cluster.create(media_server.url("clip.mp4"), filename="default")
    await completed(cluster, third)
    assert cluster.objects() == [cluster.in_bucket("default.mp4")]


async def test_a_stopped_node_has_closed_every_client_it_opened(
    cluster: Cluster, s3_server: S3Server, user_bucket: str, media_server: MediaServer
) -> None:
    answer = await cluster.client.post(
        "/user/s3", json=s3_body(s3_server, user_bucket), headers=cluster.headers()
    )
    assert answer.status_code == 201, answer.text
    await projected(cluster)
    elsewhere = another_bucket(s3_server)
    jobs = [
        await cluster.create(media_server.url("clip.mp4"), filename="account"),
        await post_job(
            cluster,
            media_server.url("clip.mp4"),
            filename="own",
            storage={"provider": "s3", **s3_body(s3_server, elsewhere)},
        ),
    ]
    await completed(cluster, *jobs)
    assert cluster.node is not None
    held = cluster.node.storages.held()
    assert len(held) == 2
    assert all(isinstance(s, S3Storage) and s.client_open for s in held)

    # The cluster's default storage belongs to whoever made it (the `spool` runtime, here the
    # test's cluster), not to the node: it stays open.
    assert isinstance(cluster.storage, S3Storage)
    await cluster.storage.exists("media/nothing-here")

    await cluster.stop_node()
    assert not any(isinstance(s, S3Storage) and s.client_open for s in held)
    assert cluster.storage.client_open


async def test_two_accounts_with_the_same_keys_never_share_a_client(
    lean: Cluster, s3_server: S3Server, user_bucket: str
) -> None:
    other = await issue(lean.store, name="other", admin=False)
    await ProjectionRunner(lean.store, all_projections()).wait_until("api_keys", other.at)
    for key in (lean.key, other.key):
        answer = await lean.client.post(
            "/user/s3", json=s3_body(s3_server, user_bucket), headers=lean.headers(key)
        )
        assert answer.status_code == 201, answer.text
    await projected(lean)
    mine = await account_of(lean, lean.key)
    storages = AccountStorages(
        lean.pool, lean.settings.resolved_secret_key(), lean.storage, guard=lean.guard, ttl=0
    )
    try:
        assert await storages.get(mine) is not await storages.get(other.account_id)
        assert storages.built == 2
    finally:
        await storages.aclose()


async def test_saving_the_same_storage_again_keeps_its_client(
    lean: Cluster, s3_server: S3Server, user_bucket: str
) -> None:
    body = s3_body(s3_server, user_bucket, folder_prefix="media")
    answer = await lean.client.post("/user/s3", json=body, headers=lean.headers())
    assert answer.status_code == 201, answer.text
    await projected(lean)
    account = await account_of(lean, lean.key)
    storages = AccountStorages(
        lean.pool, lean.settings.resolved_secret_key(), lean.storage, guard=lean.guard, ttl=0
    )
    try:
        first = await storages.get(account)
        # The same settings saved again: a new event, a new ciphertext, the same storage.
        answer = await lean.client.post("/user/s3", json=body, headers=lean.headers())
        assert answer.status_code == 201, answer.text
        await projected(lean)
        assert await storages.get(account) is first
        # Other settings: another storage, at once (ttl 0).
        answer = await lean.client.post(
            "/user/s3", json={**body, "folder_prefix": "elsewhere"}, headers=lean.headers()
        )
        assert answer.status_code == 201, answer.text
        await projected(lean)
        moved = await storages.get(account)
        assert isinstance(moved, S3Storage) and moved.prefix == "elsewhere"
        assert storages.built == 2
    finally:
        await storages.aclose()


async def test_clients_beyond_the_limit_are_closed_after_their_grace(
    lean: Cluster, s3_server: S3Server
) -> None:
    storages = AccountStorages(
        lean.pool,
        lean.settings.resolved_secret_key(),
        lean.storage,
        guard=lean.guard,
        ttl=0,
        max_targets=2,
        close_grace=0.1,
    )
    users = [await issue(lean.store, name=f"u{n}", admin=False) for n in range(3)]
    await ProjectionRunner(lean.store, all_projections()).wait_until(
        "api_keys", max(u.at for u in users)
    )
    bucket = another_bucket(s3_server)
    for user in users:
        answer = await lean.client.post(
            "/user/s3", json=s3_body(s3_server, bucket), headers=lean.headers(user.key)
        )
        assert answer.status_code == 201, answer.text
    await projected(lean)
    try:
        opened = []
        for user in users:
            storage = await storages.get(user.account_id)
            assert isinstance(storage, S3Storage)
            await storage.exists("nothing-here")  # opens its client
            opened.append(storage)
        # The least recently used went over the limit of two and was closed after its grace.
        async with asyncio.timeout(10):
            while opened[0].client_open:
                await asyncio.sleep(0.02)
        assert [isinstance(s, S3Storage) and s.client_open for s in opened] == [False, True, True]
        # Asked for again, it is built again (and the next oldest goes).
        again = await storages.get(users[0].account_id)
        assert again is not opened[0] and storages.built == 4
    finally:
        await storages.aclose()
