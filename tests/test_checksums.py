"""Every uploaded object's SHA-256, hashed as it is read for the upload, and checked where the
storage answers one: S3 (moto on loopback) confirms a single PUT's and each part's; a folder and
Azure Blob answer none, and the upload says it was not checked."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from pathlib import Path

from spool.adapters.blob_storage import BlobStorage
from spool.adapters.checksums import Sha256
from spool.adapters.storage import LocalStorage, S3Storage
from tests.fixtures.azurite import AzuriteServer, azurite_fixture  # noqa: F401 - the fixture
from tests.fixtures.s3 import S3Server

MiB = 1024 * 1024


def _s3(server: S3Server, bucket: str, **kwargs: int) -> S3Storage:
    return S3Storage(
        bucket=bucket,
        prefix="media",
        endpoint_url=server.endpoint_url,
        region=server.region,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **kwargs,
    )


def _object_sha256(server: S3Server, bucket: str, key: str) -> str:
    body = server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


async def test_a_single_put_records_the_sha256_s3_confirmed(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    (tmp_path / "a.mp4").write_bytes(os.urandom(300_000))
    storage = _s3(s3_server, s3_bucket)
    try:
        stored = await storage.put_file("a.mp4", tmp_path / "a.mp4")
    finally:
        await storage.close()
    assert stored.sha256 == _object_sha256(s3_server, s3_bucket, "media/a.mp4")
    assert stored.sha256_checked


async def test_a_multipart_upload_records_the_objects_sha256_and_s3_confirmed_every_part(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    (tmp_path / "big.mkv").write_bytes(os.urandom(11 * MiB))
    storage = _s3(s3_server, s3_bucket, multipart_threshold=5 * MiB, part_size=5 * MiB)
    try:
        stored = await storage.put_file("big.mkv", tmp_path / "big.mkv")
    finally:
        await storage.close()
    # The object's own SHA-256, not S3's composite of its three parts' digests.
    assert stored.sha256 == _object_sha256(s3_server, s3_bucket, "media/big.mkv")
    assert stored.sha256_checked
    head = s3_server.client().head_object(
        Bucket=s3_bucket, Key="media/big.mkv", ChecksumMode="ENABLED"
    )
    assert (
        head["ChecksumSHA256"].split("-")[0]
        != base64.b64encode(bytes.fromhex(stored.sha256)).decode()
    )


async def test_a_folder_records_the_sha256_and_says_it_was_not_checked(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    (tmp_path / "in.mp4").write_bytes(data)
    stored = await LocalStorage(tmp_path / "store").put_file("in.mp4", tmp_path / "in.mp4")
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert not stored.sha256_checked


async def test_azure_blob_records_the_sha256_and_says_it_was_not_checked(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    storage = BlobStorage(
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        endpoint=azurite.endpoint,
        container=f"c-{uuid.uuid4().hex[:12]}",
        block_threshold=MiB,
        block_size=MiB,
    )
    try:
        await storage.create_container()
        for size in (64 * 1024, 3 * MiB):  # one Put Blob, then blocks
            data = os.urandom(size)
            (tmp_path / "in.mp4").write_bytes(data)
            stored = await storage.put_file(f"in-{size}.mp4", tmp_path / "in.mp4")
            assert stored.sha256 == hashlib.sha256(data).hexdigest()
            assert not stored.sha256_checked
    finally:
        await storage.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_a_checksum_other_than_the_one_sent_refutes_the_upload() -> None:
    digest = Sha256()
    sent = digest.add_part(b"first part")
    assert sent == _b64(b"first part")
    assert not digest.confirm_part(1, _b64(b"something else"))
    assert not digest.checked


def test_a_composite_is_the_sha256_of_the_parts_digests_with_their_count() -> None:
    digest = Sha256()
    parts = [b"a" * 10, b"b" * 10]
    for number, part in enumerate(parts, 1):
        assert digest.confirm_part(number, digest.add_part(part))
    composite = base64.b64encode(
        hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    ).decode()
    assert digest.confirm_composite(f"{composite}-2")
    assert digest.confirm_composite(composite)  # as moto answers it, without the count
    assert digest.checked
    assert digest.hexdigest == hashlib.sha256(b"".join(parts)).hexdigest()
    assert not digest.confirm_composite(f"{composite}-3")
    assert not digest.checked


def test_a_storage_that_answers_nothing_leaves_the_upload_unchecked() -> None:
    digest = Sha256()
    digest.add_part(b"body")
    assert digest.confirm_part(1, None)
    assert not digest.checked
