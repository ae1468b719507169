"""Object storage against a real S3 server (moto on loopback) and a real folder, with real files.

moto does not check credentials unless its IAM emulation is switched on for the whole server, so
nothing here asserts that bad credentials are refused: against moto any key pair signs. The
error mapping for such answers (AccessDenied, InvalidAccessKeyId) is covered on a ClientError
built the way botocore builds it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from spool.adapters.blob_storage import BlobStorage
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import (
    LocalStorage,
    ObjectChanged,
    ObjectExists,
    ObjectStorage,
    S3Storage,
    StorageCancelled,
    StorageError,
    StoredObject,
    _ProgressThrottle,
    account_prefix,
    is_same_object,
    object_key,
    storage_from_url,
)
from tests.fixtures.azurite import AzuriteServer, azurite_fixture  # noqa: F401 - the fixture
from tests.fixtures.s3 import S3Server

MiB = 1024 * 1024


def _write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _storage(server: S3Server, bucket: str, **kwargs: object) -> S3Storage:
    return S3Storage(
        bucket=bucket,
        prefix="media",
        endpoint_url=server.endpoint_url,
        region=server.region,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def s3(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Storage]:
    storage = _storage(s3_server, s3_bucket)
    yield storage
    await storage.close()


@pytest.fixture
async def s3_multipart(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Storage]:
    """Multipart from 5 MiB on, in 5 MiB parts (S3's minimum part size)."""
    storage = _storage(s3_server, s3_bucket, multipart_threshold=5 * MiB, part_size=5 * MiB)
    yield storage
    await storage.close()


# --- S3 ----------------------------------------------------------------------------------------


async def test_small_upload_exists_and_presigned_get(
    s3: S3Storage, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    data = _write(tmp_path / "clip.mp4", 200_000)
    calls: list[tuple[int, int]] = []

    stored = await s3.put_file(
        "user/clip.mp4", tmp_path / "clip.mp4", on_progress=lambda s, t: calls.append((s, t))
    )
    assert stored == StoredObject(
        key="user/clip.mp4",
        size=len(data),
        etag=stored.etag,
        url=f"s3://{s3_bucket}/media/user/clip.mp4",
        sha256=hashlib.sha256(data).hexdigest(),
        sha256_checked=True,
    )
    assert stored.etag and '"' not in stored.etag
    assert calls == [(len(data), len(data))]
    assert await s3.exists("user/clip.mp4")
    assert not await s3.exists("user/other.mp4")

    head = s3_server.client().head_object(Bucket=s3_bucket, Key="media/user/clip.mp4")
    assert head["ContentType"] == "video/mp4"

    url = await s3.presigned_url("user/clip.mp4", expires_seconds=600)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == data


async def test_multipart_round_trip_and_progress(
    s3_multipart: S3Storage, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    data = _write(tmp_path / "big.mkv", 11 * MiB)
    calls: list[tuple[int, int]] = []

    stored = await s3_multipart.put_file(
        "big.mkv", tmp_path / "big.mkv", on_progress=lambda s, t: calls.append((s, t))
    )
    # A multipart ETag is "<md5 of the part md5s>-<number of parts>": 5 + 5 + 1 MiB.
    assert stored.etag is not None and stored.etag.endswith("-3")
    assert stored.size == len(data)
    assert calls == [(5 * MiB, len(data)), (10 * MiB, len(data)), (len(data), len(data))]

    url = await s3_multipart.presigned_url("big.mkv")
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.content == data
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="media/big.mkv")
    assert head["ContentType"] == "video/x-matroska"


async def test_cancel_during_multipart_leaves_nothing(
    s3_multipart: S3Storage, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    _write(tmp_path / "big.bin", 11 * MiB)
    cancel = asyncio.Event()
    seen: list[int] = []

    def on_progress(sent: int, total: int) -> None:
        seen.append(sent)
        cancel.set()  # after the first part is up: the next part must not start

    with pytest.raises(StorageCancelled):
        await s3_multipart.put_file(
            "big.bin", tmp_path / "big.bin", on_progress=on_progress, cancel=cancel
        )
    assert seen == [5 * MiB]
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert not await s3_multipart.exists("big.bin")


async def test_task_cancellation_aborts_the_multipart_upload(
    s3_multipart: S3Storage, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    # A worker shutting down cancels its tasks rather than setting the event; the parts already
    # sent must not be left behind as an unfinished (and billed) multipart upload either.
    _write(tmp_path / "big.bin", 11 * MiB)
    task: asyncio.Task[StoredObject] | None = None

    def on_progress(sent: int, total: int) -> None:
        assert task is not None
        task.cancel()

    task = asyncio.create_task(
        s3_multipart.put_file("big.bin", tmp_path / "big.bin", on_progress=on_progress)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


async def test_cancel_around_a_single_put_leaves_nothing(
    s3: S3Storage, s3_bucket: str, tmp_path: Path
) -> None:
    _write(tmp_path / "a.bin", 1000)
    cancel = asyncio.Event()
    cancel.set()
    with pytest.raises(StorageCancelled):
        await s3.put_file("a.bin", tmp_path / "a.bin", cancel=cancel)
    assert await s3.list_keys() == []

    # A cancel that arrives while the PUT is in flight, i.e. after the object landed but before
    # put_file returns: the object must be deleted again. The client is wrapped only to set the
    # event at exactly that moment; the PUT and the delete still go to the server.
    late = asyncio.Event()
    real_get_client = s3._get_client

    async def slow_client() -> object:
        client = await real_get_client()

        class Wrapped:
            def __getattr__(self, name: str) -> object:
                return getattr(client, name)

            async def put_object(self, **kwargs: object) -> object:
                result = await client.put_object(**kwargs)
                late.set()  # the object is in the bucket; the cancel arrives now
                return result

        return Wrapped()

    s3._get_client = slow_client  # type: ignore[method-assign]
    with pytest.raises(StorageCancelled):
        await s3.put_file("a.bin", tmp_path / "a.bin", cancel=late)
    s3._get_client = real_get_client  # type: ignore[method-assign]
    assert await s3.list_keys() == []


async def test_probe_good_and_missing_bucket(s3: S3Storage, s3_server: S3Server) -> None:
    await s3.probe()
    assert await s3.list_keys() == []  # the probe object is gone again

    missing = _storage(s3_server, "spool-no-such-bucket-here")
    try:
        with pytest.raises(StorageError) as caught:
            await missing.probe()
    finally:
        await missing.close()
    assert str(caught.value) == "NoSuchBucket: The specified bucket does not exist"
    assert caught.value.retryable is False
    assert s3_server.secret_key not in str(caught.value)


async def test_unreachable_endpoint_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = S3Storage(
        bucket="b", endpoint_url=f"http://127.0.0.1:{port}", access_key="a", secret_key="s3cr3t"
    )
    try:
        with pytest.raises(StorageError) as caught:
            await storage.probe()
    finally:
        await storage.close()
    assert caught.value.retryable is True
    assert "s3cr3t" not in str(caught.value)


async def test_a_users_endpoint_whose_host_does_not_exist_is_a_final_dns_failure(
    tmp_path: Path,
) -> None:
    storage = S3Storage(
        bucket="b",
        endpoint_url="http://storage.invalid:9000",
        access_key="a",
        secret_key="s3cr3t",
        guard=UrlGuard(),
    )
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"media")
    try:
        with pytest.raises(StorageError) as caught:
            await storage.put_file("clip.mp4", src)
    finally:
        await storage.close()
    assert str(caught.value) == "Could not resolve host storage.invalid: no such host"
    assert caught.value.retryable is False


def test_client_errors_map_to_storage_errors() -> None:
    storage = S3Storage(bucket="b", endpoint_url="http://127.0.0.1:1", secret_key="s3cr3t")

    def error(status: int, code: str, message: str) -> StorageError:
        exc = ClientError(
            {
                "Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "PutObject",
        )
        return storage._client_error(exc)

    denied = error(403, "AccessDenied", "Access Denied")
    assert (str(denied), denied.retryable, denied.code) == (
        "AccessDenied: Access Denied",
        False,
        "AccessDenied",
    )
    assert (
        error(403, "InvalidAccessKeyId", "No such key s3cr3t").args[0]
        == "InvalidAccessKeyId: No such key ***"
    )
    assert error(500, "InternalError", "We encountered an internal error").retryable
    assert error(503, "SlowDown", "Please reduce your request rate").retryable
    assert error(400, "RequestTimeout", "Your socket connection timed out").retryable
    head_404 = error(404, "404", "")
    assert str(head_404) == "404: Not Found" and not head_404.retryable


async def test_delete_is_idempotent_and_list_keys(s3: S3Storage, tmp_path: Path) -> None:
    _write(tmp_path / "x.txt", 10)
    await s3.put_file("a/x.txt", tmp_path / "x.txt")
    await s3.put_file("a/y.txt", tmp_path / "x.txt")
    await s3.put_file("b/z.txt", tmp_path / "x.txt")
    assert await s3.list_keys() == ["a/x.txt", "a/y.txt", "b/z.txt"]
    assert await s3.list_keys("a/") == ["a/x.txt", "a/y.txt"]

    await s3.delete("a/x.txt")
    await s3.delete("a/x.txt")
    await s3.delete("never/was.txt")
    assert await s3.list_keys() == ["a/y.txt", "b/z.txt"]


async def test_s3_refuses_escaping_keys(s3: S3Storage, tmp_path: Path) -> None:
    _write(tmp_path / "x", 1)
    for key in ("../x", "/x", "a/../../x", "a\\x", "a\x00x", ""):
        with pytest.raises(ValueError):
            await s3.put_file(key, tmp_path / "x")


async def test_description_has_no_secrets(s3_server: S3Server) -> None:
    storage = _storage(s3_server, "bucket")
    assert storage.description == f"s3://bucket/media at {s3_server.endpoint_url}"
    assert s3_server.secret_key not in storage.description + repr(storage)
    assert s3_server.access_key not in storage.description


async def test_storage_from_url_reaches_the_bucket(
    s3_storage_url: str, s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    storage = storage_from_url(s3_storage_url, data_dir=tmp_path)
    try:
        assert isinstance(storage, S3Storage)
        await storage.probe()
        _write(tmp_path / "f.txt", 5)
        stored = await storage.put_file("f.txt", tmp_path / "f.txt")
    finally:
        await storage.close()
    assert stored.url == f"s3://{s3_bucket}/media/f.txt"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["media/f.txt"]


# --- Local folder -------------------------------------------------------------------------------


async def test_local_round_trip(tmp_path: Path) -> None:
    storage: ObjectStorage = LocalStorage(tmp_path / "store")
    await storage.probe()
    data = _write(tmp_path / "in.mp4", 3 * MiB + 17)

    stored = await storage.put_file("u/2024/in.mp4", tmp_path / "in.mp4")
    target = tmp_path / "store" / "u" / "2024" / "in.mp4"
    assert stored == StoredObject(
        key="u/2024/in.mp4",
        size=len(data),
        etag=stored.etag,
        url=target.as_uri(),
        version_id=stored.version_id,
        sha256=hashlib.sha256(data).hexdigest(),  # a folder answers none: not checked
    )
    assert stored.version_id
    assert target.read_bytes() == data
    assert await storage.exists("u/2024/in.mp4")
    # A folder hands out no file:// paths: the API serves its files by signed Spool links.
    with pytest.raises(StorageError, match="NoLinks"):
        await storage.presigned_url("u/2024/in.mp4")
    assert await storage.list_keys() == ["u/2024/in.mp4"]
    assert await storage.list_keys("v") == []

    await storage.delete("u/2024/in.mp4")
    await storage.delete("u/2024/in.mp4")
    assert not await storage.exists("u/2024/in.mp4")
    assert not (tmp_path / "store" / "u").exists()  # emptied folders go too
    await storage.close()


async def test_local_refuses_keys_escaping_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    _write(tmp_path / "x", 1)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "link").symlink_to(tmp_path)  # a way out, if it were followed
    for key in (
        "../x",
        "/etc/passwd",
        "a/../../x",
        "..",
        ".",
        "a//b",
        "a\\..\\x",
        "a\x00",
        "link/x",
    ):
        with pytest.raises(ValueError):
            await storage.put_file(key, tmp_path / "x")
        with pytest.raises(ValueError):
            await storage.exists(key)
    assert sorted(os.listdir(tmp_path)) == ["store", "x"]


async def test_local_cancel_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    _write(tmp_path / "big", 4 * MiB)
    cancel = asyncio.Event()
    with pytest.raises(StorageCancelled):
        await storage.put_file(
            "big", tmp_path / "big", cancel=cancel, on_progress=lambda s, t: cancel.set()
        )
    assert list((tmp_path / "store").iterdir()) == []  # not even the temp file


async def test_local_progress_is_throttled_and_ends_at_total(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    total = 40 * MiB + 5  # 41 chunks of 1 MiB
    _write(tmp_path / "big", total)
    calls: list[tuple[int, int]] = []
    await storage.put_file("big", tmp_path / "big", on_progress=lambda s, t: calls.append((s, t)))

    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    sent = [s for s, _ in calls]
    assert sent == sorted(set(sent))
    # Every 5 % at most (a second is far longer than this copy takes): about 20, not 41.
    assert len(calls) <= 21
    assert all(b - a >= total * 0.05 for a, b in itertools.pairwise(sent[:-1]))


def test_progress_throttle_time_and_step() -> None:
    now = [0.0]
    calls: list[tuple[int, int]] = []
    throttle = _ProgressThrottle(1000, lambda s, t: calls.append((s, t)), clock=lambda: now[0])
    throttle.advance(10)  # 1 %, no time passed: held back
    throttle.advance(50)  # 5 %: passed on
    throttle.advance(60)
    now[0] = 1.5  # a second later even a small step is passed on
    throttle.advance(61)
    throttle.advance(62)
    throttle.advance(1000)  # the last byte: 100 % waits for finish()
    throttle.finish()
    throttle.finish()
    assert calls == [(50, 1000), (61, 1000), (1000, 1000)]

    empty: list[tuple[int, int]] = []
    zero = _ProgressThrottle(0, lambda s, t: empty.append((s, t)))
    zero.finish()
    assert empty == [(0, 0)]


# --- Keys and URLs ------------------------------------------------------------------------------


def test_object_key() -> None:
    assert object_key("", None, "a.mp4") == "a.mp4"
    assert object_key("users/42/", "shows/s1", "e1.mkv") == "users/42/shows/s1/e1.mkv"
    assert object_key("p", "f/", "x") == "p/f/x"
    for prefix, folder, name in [
        ("", "..", "a"),
        ("", "a/../..", "a"),
        ("", "/abs", "a"),
        ("", None, ".."),
        ("", None, "a/b"),
        ("", None, "a\\b"),
        ("", "f\x00", "a"),
        ("../up", None, "a"),
        ("", None, ""),
    ]:
        with pytest.raises(ValueError):
            object_key(prefix, folder, name)


def test_storage_from_url_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)

    default = storage_from_url("", data_dir=tmp_path)
    assert isinstance(default, LocalStorage) and default.root == tmp_path / "storage"
    assert isinstance(storage_from_url(None, data_dir=tmp_path), LocalStorage)
    folder = storage_from_url(f"file://{tmp_path}/media%20files", data_dir=tmp_path)
    assert isinstance(folder, LocalStorage) and folder.root == tmp_path / "media files"

    s3 = storage_from_url(
        "s3://my-bucket/a/b/?endpoint=http://127.0.0.1:9000&region=auto&path_style=false"
        "&access_key=AKID&secret_key=shh",
        data_dir=tmp_path,
    )
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region) == (
        "my-bucket",
        "a/b",
        "http://127.0.0.1:9000",
        "auto",
    )
    assert (s3._access_key, s3._secret_key, s3._path_style) == ("AKID", "shh", False)
    assert "shh" not in s3.description and "AKID" not in s3.description

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    from_env = storage_from_url("s3://bucket", data_dir=tmp_path)
    assert isinstance(from_env, S3Storage)
    assert (from_env.prefix, from_env._access_key, from_env._secret_key) == (
        "",
        "env-id",
        "env-secret",
    )
    assert from_env._path_style is True and from_env.endpoint_url is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://host/x", "unsupported storage URL ftp://"),
        ("just/a/path", "without a scheme"),
        ("file://relative/path", "three slashes"),
        ("file:///x?y=1", "no query"),
        ("s3://", "needs a bucket"),
        ("s3:///prefix", "needs a bucket"),
        ("s3://Bad Bucket!/p", "invalid bucket name"),
        ("s3://key:secretvalue@bucket/p", "must not carry credentials"),
        ("s3://bucket/p?endpoint_url=http://x", "unknown s3 storage URL parameter 'endpoint_url'"),
        ("s3://bucket/p?region=a&region=b", "given twice"),
        ("s3://bucket/p?endpoint=minio:9000", "http(s)://host[:port]"),
        ("s3://bucket/p?endpoint=http://u:secretvalue@h", "must not carry credentials"),
        ("s3://bucket/p?endpoint=http://h:99999", "bad port"),
        ("s3://bucket/p?path_style=maybe", "path_style must be true or false"),
        ("s3://bucket/p?access_key=only", "both access_key and secret_key"),
        ("s3://bucket/p?secret_key=secretvalue", "both access_key and secret_key"),
        ("s3://bucket/../up", "'..'"),
    ],
)
def test_storage_from_url_rejects_bad_urls(url: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        storage_from_url(url, data_dir=tmp_path)
    assert says in str(caught.value)
    assert "secretvalue" not in str(caught.value)


# --- Writes that never replace another's object ---------------------------------------------


async def _conditional_writes_keep_the_first_object(
    storage: ObjectStorage, tmp_path: Path, size: int, *, conditional_delete: bool = True
) -> None:
    """The promise every backend keeps: `if_absent` never replaces, the owner is kept, a HEAD
    tells the object apart from one put at its key later."""
    first = _write(tmp_path / "first.mp4", size)
    _write(tmp_path / "second.mp4", size)
    stored = await storage.put_file(
        "acct/show.mp4", tmp_path / "first.mp4", owner="job-a", if_absent=True
    )
    with pytest.raises(ObjectExists):
        await storage.put_file(
            "acct/show.mp4", tmp_path / "second.mp4", owner="job-b", if_absent=True
        )
    info = await storage.head("acct/show.mp4")
    assert info is not None and info.owner == "job-a"
    figures = {"size": stored.size, "etag": stored.etag, "version_id": stored.version_id}
    assert is_same_object(info, **figures, owner="job-a")
    assert not is_same_object(info, **figures, owner="job-b")
    chunks = [c async for c in storage.read("acct/show.mp4")]
    assert b"".join(chunks) == first  # the refused write changed nothing

    # The same owner may write over its own object (a retry of the same job) ...
    await storage.put_file("acct/show.mp4", tmp_path / "second.mp4", owner="job-a")
    # ... and then the object is no longer the one first recorded.
    assert not is_same_object(await storage.head("acct/show.mp4"), **figures, owner="job-a")
    if conditional_delete:  # the storage itself refuses a delete meant for the first object
        with pytest.raises(ObjectChanged):
            await storage.delete("acct/show.mp4", if_etag=stored.etag)
        assert await storage.head("acct/show.mp4") is not None
    await storage.delete("acct/show.mp4")
    assert not is_same_object(await storage.head("acct/show.mp4"), **figures, owner="job-a")
    assert await storage.list_keys() == []  # the owner note of a folder goes with its file


async def test_local_conditional_write_never_replaces(tmp_path: Path) -> None:
    await _conditional_writes_keep_the_first_object(
        LocalStorage(tmp_path / "store"), tmp_path, 64 * 1024, conditional_delete=False
    )


async def test_s3_conditional_put_never_replaces(s3: S3Storage, tmp_path: Path) -> None:
    await _conditional_writes_keep_the_first_object(s3, tmp_path, 64 * 1024)


async def test_s3_conditional_multipart_never_replaces_and_leaves_no_parts(
    s3_multipart: S3Storage, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    await _conditional_writes_keep_the_first_object(s3_multipart, tmp_path, 6 * MiB)
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_bucket)
    assert uploads.get("Uploads", []) == []


async def test_blob_conditional_write_never_replaces(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    storage = BlobStorage(
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        endpoint=azurite.endpoint,
        container=f"c-{uuid.uuid4().hex[:12]}",
        block_threshold=1024 * 1024,
        block_size=1024 * 1024,
    )
    try:
        await storage.create_container()
        await _conditional_writes_keep_the_first_object(storage, tmp_path, 64 * 1024)
        await _conditional_writes_keep_the_first_object(storage, tmp_path, 3 * MiB)  # blocks
    finally:
        await storage.close()


def test_account_prefixes_are_one_clean_segment_each() -> None:
    assert account_prefix("0f3c9a") == "accounts/0f3c9a"
    odd = [account_prefix(a) for a in ("..", "a/b", "../x", "", ".")]
    assert all(p.startswith("accounts/~") and p.count("/") == 1 for p in odd)
    assert len(set(odd)) == len(odd)
