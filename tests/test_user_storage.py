"""Users' own storage: /user/s3, /user/bucket, /user/gcs, /user/oss, /user/storage.

Against the in-process cluster and moto's real S3 server on loopback. GCS and OSS are S3
dialects, so they are checked through the same S3 path against moto with their endpoint
pointed at it (moto on 127.0.0.1: botocore addresses an IP endpoint path-style even when
virtual-hosted style is asked for, so the OSS configuration runs unchanged).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool.adapters import secret_box
from spool.adapters.account_storage import AccountStorages, storage_for
from spool.adapters.blob_storage import BlobStorage
from spool.adapters.event_store import Checkpoint
from spool.adapters.read_models import all_projections
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import S3Storage, StorageCancelled, StorageError
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.cluster_api_helpers import FreshApi
from tests.fixtures.azurite import AzuriteServer, azurite_fixture  # noqa: F401 - the fixture
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.s3 import S3Server

SECRET = "Sup3r/Secret+Key-that-must-never-leak"
ACCESS = "AKIAUSERSTORAGE0WXYZ"


@pytest.fixture
async def lean(start_cluster: StartCluster) -> AsyncIterator[Cluster]:
    """A cluster without a worker node: these tests only talk to the API and the log."""
    async with start_cluster(with_node=False) as c:
        yield c


@pytest.fixture
def user_bucket(s3_server: S3Server) -> str:
    """A bucket of the user's own, apart from the cluster's default bucket."""
    name = f"user-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def s3_body(s3: S3Server, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "endpoint": s3.endpoint_url,
        "bucket": bucket,
        "region": "us-east-1",
        "access_key": ACCESS,
        "secret_key": SECRET,
        **extra,
    }


async def account_of(c: Cluster, key: str) -> str:
    row = await c.pool.fetchrow(
        "SELECT account_id FROM api_keys WHERE key_hash = encode(sha256($1::bytea), 'hex')",
        key.encode(),
    )
    assert row is not None
    account_id: str = row["account_id"]
    return account_id


async def projected(c: Cluster) -> None:
    """Bring `storage_configs` up to everything appended so far."""
    runner = ProjectionRunner(c.store, all_projections())
    head = await c.pool.fetchrow(
        "SELECT tx::text::bigint AS tx, position FROM events ORDER BY position DESC LIMIT 1"
    )
    assert head is not None
    await runner.wait_until("storage_configs", Checkpoint(head["tx"], head["position"]))


async def all_event_text(c: Cluster) -> str:
    rows = await c.pool.fetch("SELECT type || data::text || metadata::text AS t FROM events")
    return "\n".join(r["t"] for r in rows)


async def test_configure_s3_masks_secrets_everywhere(
    lean: Cluster, s3_server: S3Server, user_bucket: str
) -> None:
    answer = await lean.client.post(
        "/user/s3",
        json=s3_body(s3_server, user_bucket, folder_prefix="downloads/2024/"),
        headers=lean.headers(),
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["provider"] == "s3"
    assert body["container_or_bucket"] == user_bucket
    assert body["folder_prefix"] == "downloads/2024"
    assert body["region"] == "us-east-1"
    assert body["endpoint"] == s3_server.endpoint_url
    assert body["access_key"] == "AKIA…WXYZ"
    assert body["default"] is False
    assert SECRET not in answer.text and ACCESS not in answer.text

    shown = await lean.client.get("/user/storage", headers=lean.headers())
    assert shown.status_code == 200
    assert shown.json()["container_or_bucket"] == user_bucket
    assert SECRET not in shown.text and ACCESS not in shown.text

    # Neither the secret nor the access key id is anywhere in the log, in any form.
    text = await all_event_text(lean)
    assert "StorageConfigured" in text
    assert SECRET not in text and ACCESS not in text
    await projected(lean)
    row = await lean.pool.fetchval("SELECT config::text FROM storage_configs")
    assert SECRET not in row and ACCESS not in row

    # The probe object was deleted again.
    listing = s3_server.client().list_objects_v2(Bucket=user_bucket)
    assert listing.get("KeyCount", 0) == 0


async def test_storage_for_builds_a_working_client(
    lean: Cluster, s3_server: S3Server, user_bucket: str, tmp_path: Path
) -> None:
    answer = await lean.client.post(
        "/user/s3",
        json=s3_body(s3_server, user_bucket, folder_prefix="media"),
        headers=lean.headers(),
    )
    assert answer.status_code == 201, answer.text
    await projected(lean)
    account = await account_of(lean, lean.key)
    secret_key = lean.settings.resolved_secret_key()

    storage = await storage_for(lean.pool, secret_key, account, lean.storage, guard=lean.guard)
    assert isinstance(storage, S3Storage) and storage is not lean.storage
    try:
        src = tmp_path / "clip.mp4"
        src.write_bytes(b"user media")
        stored = await storage.put_file("a/clip.mp4", src)
        assert stored.url == f"s3://{user_bucket}/media/a/clip.mp4"
        assert await storage.exists("a/clip.mp4")
    finally:
        await storage.close()
    got = s3_server.client().get_object(Bucket=user_bucket, Key="media/a/clip.mp4")
    assert got["Body"].read() == b"user media"

    # The cached resolver hands out one client per account, and the default to others.
    cache = AccountStorages(lean.pool, secret_key, lean.storage, guard=lean.guard)
    try:
        first = await cache.get(account)
        assert isinstance(first, S3Storage) and first.bucket == user_bucket
        assert await cache.get(account) is first
        assert await cache.get("someone-without-storage") is lean.storage
    finally:
        await cache.aclose()


async def test_wrong_bucket_is_refused_with_the_storage_reason(
    lean: Cluster, s3_server: S3Server
) -> None:
    answer = await lean.client.post(
        "/user/s3", json=s3_body(s3_server, "no-such-bucket-here"), headers=lean.headers()
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error.startswith("Storage check failed: NoSuchBucket"), error
    assert SECRET not in answer.text
    assert "StorageConfigured" not in await all_event_text(lean)
    shown = await lean.client.get("/user/storage", headers=lean.headers())
    assert shown.json()["default"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"bucket": "b-1", "access_key": "AKIAXXXXXXXX"}, "secret_key"),
        ({"bucket": "b-1", "access_key": "", "secret_key": "s"}, "access_key is required"),
        ({"bucket": "x", "access_key": "a", "secret_key": "s"}, "not a valid bucket name"),
        (
            {"bucket": "b-1", "access_key": "a", "secret_key": "s", "endpoint": "ftp://h/"},
            "http(s)",
        ),
        (
            {"bucket": "b-1", "access_key": "a", "secret_key": "s", "folder_prefix": "a/../b"},
            "'..'",
        ),
        (
            {"bucket": "b-1", "access_key": "a", "secret_key": "s", "endpoint": "http://u:p@h/"},
            "credentials",
        ),
        ({"bucket": "b-1", "access_key": "a", "secret_key": "s", "secret": 1}, "secret"),
    ],
)
async def test_bad_bodies_get_a_clear_400(
    module_api: FreshApi, body: dict[str, Any], message: str
) -> None:
    answer = await module_api.client.post("/user/s3", json=body, headers=module_api.user())
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]


@pytest.mark.parametrize(
    "endpoint", ["http://169.254.169.254/", "http://10.1.2.3:9000", "http://[::1]:9000"]
)
async def test_endpoints_must_pass_the_ssrf_guard(module_api: FreshApi, endpoint: str) -> None:
    body = {"endpoint": endpoint, "bucket": "b-1", "access_key": "a", "secret_key": SECRET}
    answer = await module_api.client.post("/user/s3", json=body, headers=module_api.user())
    assert answer.status_code == 400
    assert "endpoint refused" in answer.json()["error"]


async def test_needs_a_key(module_api: FreshApi) -> None:
    answer = await module_api.client.post("/user/s3", json={})
    assert answer.status_code == 401
    assert answer.json() == {"error": "Missing x-api-key header"}


async def test_delete_falls_back_to_the_default(
    lean: Cluster, s3_server: S3Server, user_bucket: str
) -> None:
    missing = await lean.client.delete("/user/s3", headers=lean.headers())
    assert missing.status_code == 404
    assert missing.json() == {"error": "No S3 storage is configured"}

    # The legacy alias is the same S3 configuration.
    answer = await lean.client.post(
        "/user/bucket", json=s3_body(s3_server, user_bucket), headers=lean.headers()
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["provider"] == "s3"
    wrong = await lean.client.delete("/user/gcs", headers=lean.headers())
    assert wrong.status_code == 404

    removed = await lean.client.delete("/user/s3", headers=lean.headers())
    assert removed.status_code == 200, removed.text
    assert removed.json()["default"] is True
    shown = await lean.client.get("/user/storage", headers=lean.headers())
    assert shown.json()["provider"] == "default"

    await projected(lean)
    account = await account_of(lean, lean.key)
    secret_key = lean.settings.resolved_secret_key()
    assert (
        await storage_for(lean.pool, secret_key, account, lean.storage, guard=lean.guard)
        is lean.storage
    )
    assert await lean.pool.fetchval("SELECT count(*) FROM storage_configs") == 0


async def test_gcs_and_oss_go_through_the_s3_path(
    lean: Cluster, s3_server: S3Server, user_bucket: str
) -> None:
    gcs = await lean.client.post(
        "/user/gcs",
        json={
            "bucket": user_bucket,
            "access_key": "GOOG1EXAMPLEHMACACCESSID",
            "secret_key": SECRET,
            "endpoint": s3_server.endpoint_url,
        },
        headers=lean.headers(),
    )
    assert gcs.status_code == 201, gcs.text
    assert gcs.json()["provider"] == "gcs"
    assert gcs.json()["path_style"] is True
    assert gcs.json()["access_key"] == "GOOG…SSID"

    oss = await lean.client.post(
        "/user/oss",
        json={
            "bucket": user_bucket,
            "region": "cn-hangzhou",
            "access_key": "LTAI5tEXAMPLEKEYID",
            "secret_key": SECRET,
            "endpoint": s3_server.endpoint_url,
        },
        headers=lean.headers(),
    )
    assert oss.status_code == 201, oss.text
    assert oss.json()["provider"] == "oss"
    assert oss.json()["path_style"] is False  # virtual-hosted, as OSS requires
    shown = await lean.client.get("/user/storage", headers=lean.headers())
    assert shown.json()["provider"] == "oss"  # the latest configuration replaced the GCS one

    await projected(lean)
    account = await account_of(lean, lean.key)
    storage = await storage_for(
        lean.pool, lean.settings.resolved_secret_key(), account, lean.storage, guard=lean.guard
    )
    try:
        await storage.probe()
    finally:
        await storage.close()
    assert SECRET not in await all_event_text(lean)


async def test_oss_defaults_its_endpoint_from_the_region(lean: Cluster) -> None:
    # Without an endpoint the OSS one is derived; unresolvable here, so the probe fails, but
    # the message shows which endpoint it was (and is the storage client's own reason).
    answer = await lean.client.post(
        "/user/oss",
        json={"bucket": "b-1", "access_key": "a", "secret_key": SECRET},
        headers=lean.headers(),
    )
    assert answer.status_code == 400
    assert "region" in answer.json()["error"]


async def test_two_users_are_independent(
    lean: Cluster, s3_server: S3Server, user_bucket: str
) -> None:
    other = await issue(lean.store, name="other", admin=False)
    await ProjectionRunner(lean.store, all_projections()).wait_until("api_keys", other.at)

    answer = await lean.client.post(
        "/user/s3", json=s3_body(s3_server, user_bucket), headers=lean.headers()
    )
    assert answer.status_code == 201, answer.text
    theirs = await lean.client.get("/user/storage", headers=lean.headers(other.key))
    assert theirs.json()["default"] is True
    assert (await lean.client.delete("/user/s3", headers=lean.headers(other.key))).status_code == (
        404
    )
    mine = await lean.client.get("/user/storage", headers=lean.headers())
    assert mine.json()["container_or_bucket"] == user_bucket

    await projected(lean)
    secret_key = lean.settings.resolved_secret_key()
    assert await storage_for(
        lean.pool, secret_key, other.account_id, lean.storage, guard=lean.guard
    ) is (lean.storage)


async def test_shredding_the_account_key_makes_credentials_unreadable(
    lean: Cluster, s3_server: S3Server, user_bucket: str
) -> None:
    answer = await lean.client.post(
        "/user/s3", json=s3_body(s3_server, user_bucket), headers=lean.headers()
    )
    assert answer.status_code == 201, answer.text
    await projected(lean)
    account = await account_of(lean, lean.key)
    secret_key = lean.settings.resolved_secret_key()

    assert await secret_box.shred(lean.pool, account) is True
    assert await secret_box.shred(lean.pool, account) is False  # nothing left to destroy
    with pytest.raises(StorageError) as caught:
        await storage_for(lean.pool, secret_key, account, lean.storage, guard=lean.guard)
    assert caught.value.code == "CredentialsUnavailable"
    assert not caught.value.retryable

    # Configuring again seals under a new key version; the old ciphertext stays dead.
    again = await lean.client.post(
        "/user/s3", json=s3_body(s3_server, user_bucket), headers=lean.headers()
    )
    assert again.status_code == 201, again.text
    await projected(lean)
    storage = await storage_for(lean.pool, secret_key, account, lean.storage, guard=lean.guard)
    await storage.close()
    version = await lean.pool.fetchval(
        "SELECT key_version FROM account_keys WHERE account_id = $1", account
    )
    assert version == 2


async def test_secret_box_binds_ciphertext_to_account_and_key(lean: Cluster) -> None:
    pool, key = lean.pool, "test-secret-key"
    sealed = await secret_box.seal(pool, key, "acct-a", b"hush")
    assert await secret_box.open_(pool, key, "acct-a", sealed) == b"hush"
    assert b"hush" not in sealed.ciphertext.encode()
    # Another account cannot open it, even with a key of its own at the same version.
    await secret_box.seal(pool, key, "acct-b", b"other")
    with pytest.raises(secret_box.SecretUnavailable):
        await secret_box.open_(pool, key, "acct-b", sealed)
    # Nor can a cluster with another SPOOL_SECRET_KEY.
    with pytest.raises(secret_box.SecretUnavailable):
        await secret_box.open_(pool, "another-secret", "acct-a", sealed)


# -- Azure Blob (Azurite) -------------------------------------------------------------------


async def test_blob_storage_block_uploads_against_azurite(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    storage = BlobStorage(
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        endpoint=azurite.endpoint,
        container=f"c-{uuid.uuid4().hex[:12]}",
        prefix="media",
        block_threshold=1024 * 1024,
        block_size=1024 * 1024,
    )
    try:
        await storage.create_container()
        await storage.probe()
        small = tmp_path / "small.txt"
        small.write_bytes(b"hello blob")
        big = tmp_path / "big.mp4"
        big.write_bytes(bytes(range(256)) * (10 * 1024 + 7))  # ~2.5 MiB: three blocks
        seen: list[tuple[int, int]] = []
        stored = await storage.put_file(
            "a/big.mp4", big, on_progress=lambda s, t: seen.append((s, t))
        )
        assert stored.size == big.stat().st_size
        assert seen[-1] == (stored.size, stored.size)
        await storage.put_file("a/small.txt", small)
        assert await storage.exists("a/big.mp4")
        assert not await storage.exists("a/missing")
        assert await storage.list_keys() == ["a/big.mp4", "a/small.txt"]

        url = await storage.presigned_url("a/big.mp4", 600)
        async with httpx.AsyncClient() as http:
            fetched = await http.get(url)
        assert fetched.status_code == 200, fetched.text
        assert fetched.content == big.read_bytes()

        cancel = asyncio.Event()
        cancel.set()
        with pytest.raises(StorageCancelled):
            await storage.put_file("a/cancelled.mp4", big, cancel=cancel)
        assert not await storage.exists("a/cancelled.mp4")

        await storage.delete("a/big.mp4")
        await storage.delete("a/big.mp4")  # twice is fine
        assert await storage.list_keys() == ["a/small.txt"]
    finally:
        await storage.close()


async def test_configure_blob_through_the_api(lean: Cluster, azurite: AzuriteServer) -> None:
    container = f"c-{uuid.uuid4().hex[:12]}"
    setup = BlobStorage(
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        endpoint=azurite.endpoint,
        container=container,
    )
    await setup.create_container()
    await setup.close()
    body = {
        "account_name": azurite.account_name,
        "account_key": azurite.account_key,
        "container": container,
        "endpoint": azurite.endpoint,
        "folder_prefix": "downloads",
    }
    missing = await lean.client.post(
        "/user/blob", json={**body, "container": "no-such-container"}, headers=lean.headers()
    )
    assert missing.status_code == 400
    assert missing.json()["error"].startswith("Storage check failed: ContainerNotFound")
    neither = await lean.client.post(
        "/user/blob", json={**body, "account_key": None}, headers=lean.headers()
    )
    assert neither.json() == {"error": "Either account_key or sas_token must be provided"}

    answer = await lean.client.post("/user/blob", json=body, headers=lean.headers())
    assert answer.status_code == 201, answer.text
    shown = answer.json()
    assert shown["provider"] == "blob"
    assert shown["container_or_bucket"] == container
    assert shown["account_name"] == azurite.account_name
    assert azurite.account_key not in answer.text
    assert azurite.account_key not in await all_event_text(lean)

    # A connection string works as well (and replaces the configuration).
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={azurite.account_name};"
        f"AccountKey={azurite.account_key};BlobEndpoint={azurite.endpoint};"
    )
    again = await lean.client.post(
        "/user/blob",
        json={"connection_string": conn, "container": container},
        headers=lean.headers(),
    )
    assert again.status_code == 201, again.text

    await projected(lean)
    account = await account_of(lean, lean.key)
    storage = await storage_for(
        lean.pool, lean.settings.resolved_secret_key(), account, lean.storage, guard=lean.guard
    )
    assert isinstance(storage, BlobStorage)
    await storage.close()
    removed = await lean.client.delete("/user/blob", headers=lean.headers())
    assert removed.status_code == 200


async def test_each_users_jobs_land_in_their_own_storage_only(
    cluster: Cluster,
    s3_server: S3Server,
    user_bucket: str,
    azurite: AzuriteServer,
    media_server: MediaServer,
    tmp_path: Path,
) -> None:
    # User A keeps media in an S3 bucket of their own; user B (the admin account here) in Blob.
    a, b = cluster.headers(), cluster.headers(cluster.admin_key)
    answer = await cluster.client.post(
        "/user/s3", json=s3_body(s3_server, user_bucket, folder_prefix="mine"), headers=a
    )
    assert answer.status_code == 201, answer.text
    container = f"c-{uuid.uuid4().hex[:12]}"
    blob = BlobStorage(
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        endpoint=azurite.endpoint,
        container=container,
    )
    await blob.create_container()
    answer = await cluster.client.post(
        "/user/blob",
        headers=b,
        json={
            "account_name": azurite.account_name,
            "account_key": azurite.account_key,
            "container": container,
            "endpoint": azurite.endpoint,
        },
    )
    assert answer.status_code == 201, answer.text
    await projected(cluster)

    job_a = (
        await cluster.client.post(
            "/jobs", headers=a, json={"url": media_server.url("clip.mp4"), "filename": "from-a"}
        )
    ).json()["job_id"]
    job_b = (
        await cluster.client.post(
            "/jobs", headers=b, json={"url": media_server.url("clip.mp4"), "filename": "from-b"}
        )
    ).json()["job_id"]
    done_a = await cluster.wait(job_a, "Completed", "Failed", seconds=90)
    for _ in range(900):
        done_b = (await cluster.client.get(f"/jobs/{job_b}", headers=b)).json()
        if done_b["status"] in ("Completed", "Failed"):
            break
        await asyncio.sleep(0.1)
    assert (done_a["status"], done_b["status"]) == ("Completed", "Completed"), (done_a, done_b)

    listing = s3_server.client().list_objects_v2(Bucket=user_bucket)
    assert [o["Key"] for o in listing.get("Contents", [])] == ["mine/from-a.mp4"]
    assert await blob.list_keys() == ["from-b.mp4"]
    assert cluster.objects() == []  # nothing went to the cluster's default bucket
    async with httpx.AsyncClient() as client:
        got_a = await client.get(done_a["s3_url"])
        got_b = await client.get(done_b["s3_url"])
    assert got_a.status_code == got_b.status_code == 200
    assert got_a.content == got_b.content  # the same clip, from two different storages
    await blob.close()


async def test_a_jobs_own_storage_overrides_the_users_for_that_job_only(
    cluster: Cluster, s3_server: S3Server, user_bucket: str, media_server: MediaServer
) -> None:
    own = (
        await cluster.client.post(
            "/jobs",
            headers=cluster.headers(),
            json={
                "url": media_server.url("clip.mp4"),
                "filename": "elsewhere",
                "storage": {
                    "provider": "s3",
                    **s3_body(s3_server, user_bucket, folder_prefix="one-off"),
                },
            },
        )
    ).json()["job_id"]
    plain = await cluster.create(media_server.url("clip.mp4"), filename="usual")
    for job_id in (own, plain):
        assert (await cluster.wait(job_id, "Completed", "Failed", seconds=90))[
            "status"
        ] == "Completed"
    listing = s3_server.client().list_objects_v2(Bucket=user_bucket)
    assert [o["Key"] for o in listing.get("Contents", [])] == ["one-off/elsewhere.mp4"]
    assert cluster.objects() == [cluster.in_bucket("usual.mp4")]
    assert SECRET not in await all_event_text(cluster)
    done = await cluster.job(own)
    async with httpx.AsyncClient() as client:
        assert (await client.get(done["s3_url"])).status_code == 200

    refused = await cluster.client.post(
        "/jobs",
        headers=cluster.headers(),
        json={
            "url": media_server.url("clip.mp4"),
            "storage": {"provider": "s3", **s3_body(s3_server, "no-such-bucket-here")},
        },
    )
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("Storage check failed: NoSuchBucket")


async def test_a_bulk_requests_storage_is_where_each_of_its_jobs_lands(
    cluster: Cluster, s3_server: S3Server, user_bucket: str, media_server: MediaServer
) -> None:
    answer = await cluster.client.post(
        "/jobs/bulk",
        headers=cluster.headers(),
        json={
            "jobs": [
                {"url": media_server.url("clip.mp4"), "filename": "first"},
                {"url": media_server.url("clip.mp4"), "filename": "second"},
            ],
            "storage": {"provider": "s3", **s3_body(s3_server, user_bucket, folder_prefix="bulk")},
        },
    )
    assert answer.status_code == 201, answer.text
    for job_id in answer.json()["job_ids"]:
        done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)
        assert done["status"] == "Completed", done
    listing = s3_server.client().list_objects_v2(Bucket=user_bucket)
    keys = sorted(o["Key"] for o in listing.get("Contents", []))
    assert keys == ["bulk/first.mp4", "bulk/second.mp4"]
    assert cluster.objects() == []  # nothing went to the cluster's default bucket
    assert SECRET not in await all_event_text(cluster)


async def test_a_users_endpoint_is_judged_again_on_every_connection(
    lean: Cluster, s3_server: S3Server, user_bucket: str, tmp_path: Path
) -> None:
    # Configured by name while that name was allowed: it passed the check and the probe.
    by_name = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    answer = await lean.client.post(
        "/user/s3",
        json={**s3_body(s3_server, user_bucket), "endpoint": by_name},
        headers=lean.headers(),
    )
    assert answer.status_code == 201, answer.text
    await projected(lean)
    account = await account_of(lean, lean.key)
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"user media")
    # Now the name leads somewhere the guard refuses (as a rebound name would): a node's
    # guard that admits nothing private stands in for the DNS answer changing under it.
    strict = AccountStorages(
        lean.pool, lean.settings.resolved_secret_key(), lean.storage, guard=UrlGuard(())
    )
    try:
        storage = await strict.get(account)
        with pytest.raises(StorageError) as refused:
            await storage.put_file("rebound.mp4", src)
        assert refused.value.code == "AddressRefused" and not refused.value.retryable
        assert (
            str(refused.value) == "URL refused: localhost resolves to 127.0.0.1, a loopback address"
        )
    finally:
        await strict.aclose()
    listing = s3_server.client().list_objects_v2(Bucket=user_bucket)
    assert listing.get("Contents", []) == []  # nothing reached the storage


async def test_a_blob_endpoint_is_judged_again_on_every_connection(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    by_name = azurite.endpoint.replace("127.0.0.1", "localhost")
    assert by_name != azurite.endpoint
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"user media")
    storage = BlobStorage(
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        endpoint=by_name,
        container="never-reached",
        guard=UrlGuard(()),
    )
    try:
        with pytest.raises(StorageError) as refused:
            await storage.put_file("rebound.mp4", src)
        assert refused.value.code == "AddressRefused" and not refused.value.retryable
        assert "localhost resolves to 127.0.0.1" in str(refused.value)
    finally:
        await storage.close()


async def test_two_jobs_with_one_name_in_an_accounts_own_blob_container_keep_both_files(
    cluster: Cluster, azurite: AzuriteServer, media_server: MediaServer
) -> None:
    container = f"c-{uuid.uuid4().hex[:12]}"
    blob = BlobStorage(
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        endpoint=azurite.endpoint,
        container=container,
    )
    await blob.create_container()
    answer = await cluster.client.post(
        "/user/blob",
        headers=cluster.headers(),
        json={
            "account_name": azurite.account_name,
            "account_key": azurite.account_key,
            "container": container,
            "endpoint": azurite.endpoint,
        },
    )
    assert answer.status_code == 201, answer.text
    await projected(cluster)
    first_id = await cluster.create(media_server.url("clip.mp4"), filename="pilot")
    first = await cluster.wait(first_id, "Completed", "Failed", seconds=90)
    second_id = await cluster.create(media_server.url("clip.mp4"), filename="pilot")
    second = await cluster.wait(second_id, "Completed", "Failed", seconds=90)
    assert (first["status"], second["status"]) == ("Completed", "Completed")

    # The account's own container: no account folder, but the second job's name is its own.
    short = second_id.split("-")[0]
    assert (first["storage_key"], second["storage_key"]) == ("pilot.mp4", f"pilot [{short}].mp4")
    assert await blob.list_keys() == ["pilot [" + short + "].mp4", "pilot.mp4"]
    info = await blob.head("pilot.mp4")
    assert info is not None and info.owner == first_id
    async with httpx.AsyncClient() as client:
        for done in (first, second):
            assert "sig=" in done["s3_url"]  # a SAS link
            assert (await client.get(done["s3_url"])).status_code == 200

    deleted = await cluster.client.delete(f"/jobs/{second_id}/file", headers=cluster.headers())
    assert deleted.status_code == 200, deleted.text
    assert await blob.list_keys() == ["pilot.mp4"]
    assert cluster.objects() == []
    await blob.close()
