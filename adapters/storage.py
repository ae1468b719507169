"""Object storage: where finished media goes. Any S3-compatible endpoint, or a local folder.

Both backends speak one small protocol (`ObjectStorage`) so the upload stage does not care which
it has. Keys given to a storage are relative to that storage's own prefix (an S3 URL's path, or a
folder's root) and are checked so that they can never climb out of it.

An upload ends in exactly one of two states: the whole object is there, or nothing is. A cancel or
a failure mid-upload aborts the multipart upload (S3 keeps, and bills, the parts of an upload
nobody completes or aborts), and a cancel that lands after the object was written deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import mimetypes
import os
import re
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from spool.adapters.checksums import Sha256
from spool.adapters.guarded_resolver import RefusedAddress, guarded_connector_args
from spool.adapters.ssrf import UrlGuard

log = logging.getLogger(__name__)

AddressingStyle: TypeAlias = Literal["path", "virtual", "auto"]
"""How a client names the bucket: in the path, in the host name, or as botocore sees fit."""

UploadProgress: TypeAlias = Callable[[int, int], None]
"""Called as `(bytes_sent, total_bytes)` while an upload runs, ending with `(total, total)`."""

# S3's own limits: parts other than the last must be at least 5 MiB, an upload has at most
# 10,000 parts, and a SigV4 presigned URL lives at most 7 days.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

_LOCAL_CHUNK = 1024 * 1024
_LOCAL_TEMP_PREFIX = ".spool-upload-"
_LOCAL_OWNER_PREFIX = ".spool-owner-"
_PROBE_PREFIX = ".spool-probe-"
_S3_OWNER = "spool-job"
"""The user metadata name (`x-amz-meta-spool-job`) that keeps the job an object belongs to."""

# Error codes that mean "try again later" even when the status is a 4xx (S3 throttles with 503
# SlowDown, but other S3-compatible stores answer 429 or 400 with these codes).
_RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        # The body arrived other than it was sent (adapters/checksums.py): send it again.
        "BadDigest",
    }
)


class StoredObject(msgspec.Struct):
    """An object that an upload left in storage.

    `key` is the key as given (relative to the storage's prefix); `url` names the object in full:
    `s3://bucket/prefix/key` or `file:///abs/path`. `etag` is S3's ETag without its quotes (an MD5
    hex digest for single-part objects, `<md5>-<parts>` for multipart ones).
    """

    key: str
    size: int
    etag: str | None
    url: str
    version_id: str | None = None
    """What tells this very object from a later one at the same key, when the storage says:
    S3's version id (versioned buckets), a local file's inode and modification time."""
    sha256: str | None = None
    """The SHA-256 (hex) of the bytes sent, hashed as they were read (adapters/checksums.py)."""
    sha256_checked: bool = False
    """Whether the storage answered checksums of what it stored and they matched (S3)."""


class ObjectInfo(msgspec.Struct, frozen=True):
    """What a stored object is: its size in bytes and, when the storage keeps them, its type,
    ETag, version (as `StoredObject.version_id`) and owner (the `owner` it was put with)."""

    size: int
    content_type: str | None = None
    etag: str | None = None
    version_id: str | None = None
    owner: str | None = None


def is_same_object(
    info: ObjectInfo | None,
    *,
    size: int | None,
    etag: str | None,
    version_id: str | None,
    owner: str | None,
) -> bool:
    """Whether `info` (a HEAD) is still the object that was stored with these figures.

    Every figure both sides know must agree; a figure the record lacks (an event written before
    it was recorded) is not held against the object. An object someone else put there since has
    a new version, ETag or owner (and mostly a new size); a missing one is never the same.
    """
    if info is None:
        return False
    if size is not None and info.size != size:
        return False
    if version_id is not None and info.version_id is not None and info.version_id != version_id:
        return False
    if etag is not None and info.etag is not None and info.etag != etag:
        return False
    return owner is None or info.owner is None or info.owner == owner


_ACCOUNT_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def account_prefix(account_id: str) -> str:
    """The folder every key of `account_id` lives under on a storage the account does not own.

    `accounts/<account_id>`, or a digest of the id when the id could not be one clean path
    segment (so no id can reach another's folder, or climb out with '..').
    """
    if _ACCOUNT_SEGMENT.match(account_id) and account_id not in (".", ".."):
        return f"accounts/{account_id}"
    return f"accounts/~{hashlib.sha256(account_id.encode()).hexdigest()[:32]}"


READ_CHUNK = 256 * 1024
"""How many bytes `read` yields at a time: small enough to stop soon after a client leaves."""


def range_header(start: int, end: int | None) -> str:
    """An HTTP `Range` value for bytes `start`..`end` (inclusive; None: to the end)."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range {start}-{end}")
    return f"bytes={start}-{'' if end is None else end}"


class StorageError(Exception):
    """A storage refused or failed an operation.

    The message is the storage's own reason (`"NoSuchBucket: The specified bucket does not
    exist"`) and is safe to show a user: it never carries credentials. `retryable` says whether the
    same call may succeed later (server errors, throttling, connection trouble) or needs someone to
    change something first (missing bucket, denied access).
    """

    def __init__(self, message: str, *, retryable: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code
        self.unfinished: str | None = None
        """An upload the failed call began and could not undo, the storage being gone by then,
        in the form `abort_unfinished` takes. Its parts cost storage until it is aborted."""


class ObjectChanged(StorageError):
    """A conditional delete found another object at the key than the one it was meant for:
    nothing was deleted."""

    def __init__(self, key: str) -> None:
        super().__init__(f"PreconditionFailed: the object at {key} has changed", code="Changed")


class ObjectExists(StorageError):
    """`put_file(..., if_absent=True)` found an object at the key already: nothing was written,
    and the object there was left as it was."""

    def __init__(self, key: str) -> None:
        super().__init__(f"PreconditionFailed: an object already exists at {key}", code="Exists")


# What the storages answer when a conditional write meets an object (S3 412, a concurrent
# conditional write 409; Azure 409 BlobAlreadyExists or 412 ConditionNotMet).
_EXISTS_CODES = frozenset(
    {
        "PreconditionFailed",
        "412",
        "ConditionalRequestConflict",
        "BlobAlreadyExists",
        "ConditionNotMet",
    }
)


# What an S3-compatible store that does not know a condition (`If-None-Match` on PutObject,
# `If-Match` on DeleteObject) may answer: the request is sent again without it (the caller
# compared a HEAD already, which is all such a store allows).
_NO_CONDITION_CODES = frozenset({"NotImplemented", "501", "InvalidArgument", "InvalidRequest"})

# What an S3-compatible store that does not know SHA-256 checksums may answer them: the upload
# is sent again without (and recorded as not checked).
_NO_CHECKSUM_CODES = _NO_CONDITION_CODES | {"MalformedXML"}


def _bad_digest(key: str) -> StorageError:
    return StorageError(
        f"BadDigest: the storage's SHA-256 of {key} is not that of the bytes sent",
        retryable=True,
        code="BadDigest",
    )


def refused_as_existing(exc: StorageError) -> bool:
    """Whether a conditional write failed because an object is at the key."""
    return exc.code in _EXISTS_CODES


class StorageCancelled(Exception):
    """An upload was cancelled through its `cancel` event; no object was left behind."""


class ObjectStorage(Protocol):
    """What the upload stage needs from a storage. Keys are relative to the storage's prefix."""

    description: str
    """Where objects go, for people and logs, e.g. `s3://bucket/prefix at http://host:9000`."""

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str | None = None,
        on_progress: UploadProgress | None = None,
        cancel: asyncio.Event | None = None,
        owner: str | None = None,
        if_absent: bool = False,
    ) -> StoredObject:
        """Upload the file at `path` as `key`; all of it or, on error or cancel, nothing.

        `owner` is kept with the object (`head` tells it). With `if_absent`, the write is
        conditional: `ObjectExists` if an object is at `key` by the time it would land.
        """
        ...

    async def delete(self, key: str, *, if_etag: str | None = None) -> None:
        """Delete `key`; deleting a missing object is not an error.

        With `if_etag`, only while the object's ETag is still that one, where the storage can
        make a delete conditional (S3 `If-Match`, Blob `If-Match`): `ObjectChanged` otherwise.
        A folder cannot; its callers compare a HEAD first (`adapters.owned_objects`).
        """
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object `key` exists."""
        ...

    async def presigned_url(self, key: str, expires_seconds: int = 86400) -> str:
        """A URL that fetches `key` without credentials for `expires_seconds`."""
        ...

    async def probe(self) -> None:
        """Write and delete a small object; raise `StorageError` with the storage's reason."""
        ...

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Size (and type, ETag, version, owner) of `key`; None when there is no such object."""
        ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """The bytes of `key` from `start` to `end` (inclusive; None: to the end), in chunks.

        The range must lie inside the object (`head` tells its size); a missing object raises
        `StorageError`. Closing the iterator early releases the connection or file.
        """
        ...

    async def abort_unfinished(self, upload: str) -> None:
        """Undo an upload a failed `put_file` left (`StorageError.unfinished`); twice is fine."""
        ...

    async def close(self) -> None:
        """Release connections; the storage may be used again afterwards."""
        ...


# ---------------------------------------------------------------------------------------------
# Keys


def _check_key(key: str, *, what: str = "object key") -> str:
    """`key` if it is a clean relative path, else ValueError. Shared by every backend so that a
    key that would escape a folder is refused in S3 too (the same key may later go to a folder).
    """
    if not key:
        raise ValueError(f"{what} is empty")
    if "\x00" in key:
        raise ValueError(f"{what} contains a NUL character")
    if "\\" in key:
        raise ValueError(f"{what} contains a backslash: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"{what} must be relative, not start with '/': {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"{what} has an empty, '.' or '..' path segment: {key!r}")
    return key


def object_key(prefix: str, folder: str | None, filename: str) -> str:
    """Join `prefix`, `folder` and `filename` into one object key, refusing anything that could
    climb out of `prefix` ('..', a leading '/', backslashes, NUL).

    The API sanitises folder and file names already; this is the last line of defence, so it
    refuses rather than repairs. `prefix` may end in '/'; `folder` may be nested (`a/b`).
    """
    parts: list[str] = []
    prefix = prefix.rstrip("/")
    if prefix:
        parts.append(_check_key(prefix, what="prefix"))
    if folder:
        parts.append(_check_key(folder.rstrip("/") or "/", what="folder"))
    if "/" in filename:
        raise ValueError(f"file name must not contain '/': {filename!r}")
    parts.append(_check_key(filename, what="file name"))
    return "/".join(parts)


def _content_type(key: str, path: Path) -> str:
    # The key is what readers will see (the local file may be a temp name), so it wins.
    guessed = mimetypes.guess_type(key.rsplit("/", 1)[-1])[0] or mimetypes.guess_type(path.name)[0]
    return guessed or "application/octet-stream"


# ---------------------------------------------------------------------------------------------
# Progress


class _ProgressThrottle:
    """Passes progress on at most once a second or every 5 %, whichever comes first, and then
    exactly one final `(total, total)` once the object is really stored.

    The final call is held back until the upload is complete (not when the last byte left), so a
    caller that sees 100 % can rely on the object being there.
    """

    def __init__(
        self,
        total: int,
        callback: UploadProgress | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
        fraction: float = 0.05,
    ) -> None:
        self._total = total
        self._callback = callback
        self._clock = clock
        self._interval = interval
        self._step = max(1, math.ceil(total * fraction))
        self._last_sent = 0
        self._last_time = clock()
        self._finished = False

    def advance(self, sent: int) -> None:
        """Note that `sent` bytes are out; maybe tell the callback."""
        if self._callback is None or self._finished or sent >= self._total:
            return
        now = self._clock()
        if sent - self._last_sent >= self._step or (
            sent > self._last_sent and now - self._last_time >= self._interval
        ):
            self._last_sent, self._last_time = sent, now
            self._callback(sent, self._total)

    def finish(self) -> None:
        """The object is stored: report 100 %, once."""
        if self._callback is None or self._finished:
            return
        self._finished = True
        self._callback(self._total, self._total)


def _cancelled(cancel: asyncio.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def _refusal_in(exc: BaseException) -> RefusedAddress | None:
    """The guard's refusal behind a connection error, if that is what it was."""
    seen: BaseException | None = exc
    for _ in range(8):  # botocore -> aiohttp -> our OSError, through kwargs, causes and os_error
        if seen is None:
            return None
        if isinstance(seen, RefusedAddress):
            return seen
        kwargs = getattr(seen, "kwargs", None)
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        seen = inner or getattr(seen, "os_error", None) or seen.__cause__ or seen.__context__
    return None


# ---------------------------------------------------------------------------------------------
# S3


_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AioSession] = (
    weakref.WeakKeyDictionary()
)


def _aio_session() -> AioSession:
    """The running loop's one aiobotocore session, which every `S3Storage` makes clients from.

    A session caches what botocore reads from its JSON data files (endpoints, the S3 service
    model): the first client of a session costs 70-170 ms of CPU, each later one about 5 ms, so
    a storage per account (or a storage built again after its settings changed) no longer pays
    the first figure. A session holds no credentials of ours: each client is given its
    storage's own keys; only a storage without keys uses the session's chain (environment,
    instance role), whose refreshing credentials hold an asyncio lock: hence one session per
    loop (a process runs one loop, but `spool` prepares some things in a loop of their own).
    """
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None:
        session = _SESSIONS[loop] = get_session()
    return session


class S3Storage:
    """Any S3-compatible store (AWS S3, Cloudflare R2, MinIO, ...) through aiobotocore.

    One client per instance, created on first use and closed by `close()`: keep the instance
    (as a node keeps its storages) and every upload to it shares the client and its connection
    pool, concurrent uploads included (they all run on the process's one event loop, which is
    how aiobotocore clients are meant to be shared). Files above
    `multipart_threshold` go up in `part_size` parts, one at a time, so a cancel takes effect
    between parts and memory use stays at one part.
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        path_style: bool = True,
        addressing_style: AddressingStyle | None = None,
        multipart_threshold: int = 8 * 1024 * 1024,
        part_size: int = 8 * 1024 * 1024,
        guard: UrlGuard | None = None,
    ) -> None:
        # A user's endpoint: every connection's address judged again (DNS rebinding).
        self._guard = guard
        if not bucket:
            raise ValueError("bucket is empty")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if multipart_threshold < 0:
            raise ValueError("multipart_threshold must not be negative")
        prefix = prefix.strip("/")
        if prefix:
            _check_key(prefix, what="prefix")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        # MinIO and moto ignore the region but SigV4 needs one to sign with; us-east-1 is what
        # they expect. Against AWS itself (no endpoint) botocore's own lookup decides.
        self.region = region or ("us-east-1" if endpoint_url else None)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._access_key = access_key
        self._secret_key = secret_key
        self._path_style = path_style
        # botocore's "auto" means path style with a custom endpoint; Alibaba OSS refuses path
        # style, so its storages ask for "virtual" outright.
        self._addressing_style: AddressingStyle = addressing_style or (
            "path" if path_style else "auto"
        )
        self.checksums = True
        """Whether uploads send SHA-256 checksums; off once the store refused them."""
        self._client: Any = None
        self.clients_opened = 0
        """How many clients this storage has opened: one, unless it was closed and used again."""
        self._stack: AsyncExitStack | None = None
        self._client_lock = asyncio.Lock()
        where = _redact_userinfo(endpoint_url) if endpoint_url else f"AWS {self.region or ''}"
        self.description = f"s3://{bucket}/{prefix} at {where.rstrip()}"

    def __repr__(self) -> str:
        return f"S3Storage({self.description})"

    def _full_key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _url(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    def _key_of(self, full_key: str) -> str:
        """The key (relative to the prefix) of a full key."""
        return full_key.removeprefix(f"{self.prefix}/") if self.prefix else full_key

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                config = AioConfig(
                    signature_version="s3v4",
                    s3={"addressing_style": self._addressing_style},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=120,
                    # botocore >= 1.36 adds CRC checksums to every upload by default; several
                    # S3-compatible stores (older MinIO, some R2 paths) reject those headers.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    connector_args=guarded_connector_args(self._guard) or None,
                )
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    _aio_session().create_client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region,
                        aws_access_key_id=self._access_key,
                        aws_secret_access_key=self._secret_key,
                        config=config,
                    )
                )
                self._stack = stack
                self.clients_opened += 1
        return self._client

    @property
    def client_open(self) -> bool:
        """Whether a client (and its connection pool) is open now."""
        return self._client is not None

    async def close(self) -> None:
        """Close the client and its connection pool; a later call opens a new one."""
        async with self._client_lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                await stack.aclose()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn botocore's exceptions into `StorageError`s with the storage's own reason."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc) from exc
        except (BotoConnectionError, HTTPClientError) as exc:
            refused = _refusal_in(exc)
            if refused is not None:
                raise StorageError(str(refused), retryable=False, code="AddressRefused") from exc
            raise StorageError(
                self._redact(str(exc)), retryable=True, code="ConnectionError"
            ) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageError(
                f"NoCredentials: {exc}", retryable=False, code="NoCredentials"
            ) from exc
        except BotoCoreError as exc:
            raise StorageError(self._redact(str(exc)), retryable=False) from exc

    def _client_error(self, exc: ClientError) -> StorageError:
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        code = str(error.get("Code") or status or "Unknown")
        # HEAD answers have no body, so botocore only knows the status ("404", "Not Found").
        message = str(error.get("Message") or "") or _HTTP_REASONS.get(status, "no message")
        retryable = status >= 500 or status == 429 or code in _RETRYABLE_CODES
        return StorageError(self._redact(f"{code}: {message}"), retryable=retryable, code=code)

    def _redact(self, text: str) -> str:
        # Stores echo little back, but an error string must never be the way a secret leaks.
        if self._secret_key:
            text = text.replace(self._secret_key, "***")
        return text

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str | None = None,
        on_progress: UploadProgress | None = None,
        cancel: asyncio.Event | None = None,
        owner: str | None = None,
        if_absent: bool = False,
    ) -> StoredObject:
        """Upload `path` as `key`: a single PUT up to `multipart_threshold`, multipart above.

        `owner` goes into the object's metadata (`x-amz-meta-spool-job`). `if_absent` sends
        `If-None-Match: *` on the PUT, or on CompleteMultipartUpload, so S3 itself refuses to
        replace an object that landed meanwhile: `ObjectExists`, with the parts aborted.

        Raises `StorageCancelled` if `cancel` is set before the upload completes (or just after:
        then the finished object is deleted again), `StorageError` if the storage fails, and
        `OSError` if the local file cannot be read. Either way no object and no unfinished
        multipart upload are left behind.
        """
        full_key = self._full_key(key)
        size = (await asyncio.to_thread(path.stat)).st_size
        content_type = content_type or _content_type(key, path)
        progress = _ProgressThrottle(size, on_progress)
        if _cancelled(cancel):
            raise StorageCancelled(f"upload of {key} cancelled")
        client = await self._get_client()
        extra: dict[str, Any] = {}
        if owner is not None:
            extra["Metadata"] = {_S3_OWNER: owner}
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        digest = Sha256()
        checksums = self.checksums
        try:
            if size > self.multipart_threshold:
                etag, version_id = await self._put_multipart(
                    client,
                    full_key,
                    path,
                    size,
                    content_type,
                    progress,
                    cancel,
                    extra,
                    condition,
                    digest,
                )
            else:
                body = await asyncio.to_thread(path.read_bytes)
                sent = await asyncio.to_thread(digest.add_part, body)
                checksum = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": sent}
                with self._errors():
                    response = await client.put_object(
                        Bucket=self.bucket,
                        Key=full_key,
                        Body=body,
                        ContentType=content_type,
                        **extra,
                        **condition,
                        **(checksum if checksums else {}),
                    )
                etag, version_id = response.get("ETag"), response.get("VersionId")
                if not digest.confirm_part(1, response.get("ChecksumSHA256")):
                    await self._delete_quietly(key, etag.strip('"') if etag else None)
                    raise _bad_digest(key)
        except StorageError as exc:
            if if_absent and refused_as_existing(exc):
                exists = ObjectExists(key)
                exists.unfinished = exc.unfinished
                raise exists from exc
            if checksums and exc.code in _NO_CHECKSUM_CODES and exc.unfinished is None:
                log.warning(
                    "%s takes no SHA-256 checksums (%s); writing %s without", self, exc, key
                )
                self.checksums = False
                return await self.put_file(
                    key,
                    path,
                    content_type=content_type,
                    on_progress=on_progress,
                    cancel=cancel,
                    owner=owner,
                    if_absent=if_absent,
                )
            if if_absent and exc.code in _NO_CONDITION_CODES and exc.unfinished is None:
                log.warning(
                    "%s takes no conditional writes (%s); writing %s plainly", self, exc, key
                )
                return await self.put_file(
                    key,
                    path,
                    content_type=content_type,
                    on_progress=on_progress,
                    cancel=cancel,
                    owner=owner,
                )
            raise
        if _cancelled(cancel):
            # The cancel came while the last request was in flight: undo it, as promised (and
            # only it: the ETag it was given).
            await self._delete_quietly(key, etag.strip('"') if etag else None)
            raise StorageCancelled(f"upload of {key} cancelled")
        progress.finish()
        return StoredObject(
            key=key,
            size=size,
            etag=etag.strip('"') if etag else None,
            url=self._url(full_key),
            version_id=version_id if version_id not in (None, "null") else None,
            sha256=digest.hexdigest,
            sha256_checked=checksums and digest.checked,
        )

    async def _put_multipart(
        self,
        client: Any,
        full_key: str,
        path: Path,
        size: int,
        content_type: str,
        progress: _ProgressThrottle,
        cancel: asyncio.Event | None,
        extra: dict[str, Any],
        condition: dict[str, Any],
        digest: Sha256,
    ) -> tuple[str | None, str | None]:
        # A file too big for 10,000 parts of the configured size gets larger parts instead.
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        checksums = self.checksums
        algorithm = {"ChecksumAlgorithm": "SHA256"} if checksums else {}
        with self._errors():
            created = await client.create_multipart_upload(
                Bucket=self.bucket, Key=full_key, ContentType=content_type, **extra, **algorithm
            )
        upload_id: str = created["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            sent = 0
            with path.open("rb") as f:
                for number in range(1, MAX_PARTS + 1):
                    if _cancelled(cancel):
                        raise StorageCancelled(f"upload of {full_key} cancelled")
                    chunk = await asyncio.to_thread(f.read, part_size)
                    if not chunk:
                        break
                    sent_sum = await asyncio.to_thread(digest.add_part, chunk)
                    checksum = {"ChecksumSHA256": sent_sum, **algorithm} if checksums else {}
                    with self._errors():
                        part = await client.upload_part(
                            Bucket=self.bucket,
                            Key=full_key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=chunk,
                            **checksum,
                        )
                    answered = part.get("ChecksumSHA256")
                    if not digest.confirm_part(number, answered):
                        raise _bad_digest(full_key)
                    listed = {"ChecksumSHA256": answered} if answered else {}
                    parts.append({"ETag": part["ETag"], "PartNumber": number, **listed})
                    sent += len(chunk)
                    progress.advance(sent)
            if _cancelled(cancel):
                raise StorageCancelled(f"upload of {full_key} cancelled")
            with self._errors():
                done = await client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **condition,
                )
        except BaseException as exc:
            # Also on task cancellation: shield the abort so the parts do not linger.
            aborted = False
            with contextlib.suppress(BaseException):
                aborted = await asyncio.shield(self._abort(full_key, upload_id))
            if not aborted and isinstance(exc, StorageError):
                exc.unfinished = f"{upload_id} {full_key}"
            raise
        etag, version_id = done.get("ETag"), done.get("VersionId")
        if checksums and digest.checked:
            answered = done.get("ChecksumSHA256")
            if answered is None:  # some stores answer the composite only to a HEAD
                with self._errors():
                    head = await client.head_object(
                        Bucket=self.bucket, Key=full_key, ChecksumMode="ENABLED"
                    )
                answered = head.get("ChecksumSHA256")
            if not digest.confirm_composite(answered):
                stored = str(etag).strip('"') if etag else None
                await self._delete_quietly(self._key_of(full_key), stored)
                raise _bad_digest(self._key_of(full_key))
        return (str(etag) if etag else None), (str(version_id) if version_id else None)

    async def _abort(self, full_key: str, upload_id: str) -> bool:
        try:
            await self.abort_unfinished(f"{upload_id} {full_key}")
        except Exception as exc:
            # The caller records it (`StorageError.unfinished`) for a later attempt to abort.
            log.warning("could not abort multipart upload %s of %s: %s", upload_id, full_key, exc)
            return False
        return True

    async def abort_unfinished(self, upload: str) -> None:
        """Abort a multipart upload a failed `put_file` could not; one already gone is fine."""
        upload_id, _, full_key = upload.partition(" ")
        client = await self._get_client()
        try:
            with self._errors():
                await client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id
                )
        except StorageError as exc:
            if exc.code != "NoSuchUpload":
                raise

    async def _delete_quietly(self, key: str, etag: str | None) -> None:
        try:
            await self.delete(key, if_etag=etag)
        except Exception as exc:
            log.warning("could not delete cancelled upload %s: %s", key, exc)

    async def delete(self, key: str, *, if_etag: str | None = None) -> None:
        """Delete `key`. S3 answers 204 for a missing key too, so this is idempotent.

        `if_etag` sends `If-Match`: S3 itself refuses (412, `ObjectChanged`) when the object was
        replaced since. A store that does not know the condition on deletes and says so
        (`NotImplemented`, `InvalidArgument`) is asked again without it.
        """
        full_key = self._full_key(key)
        client = await self._get_client()
        if if_etag is not None:
            try:
                with self._errors():
                    await client.delete_object(
                        Bucket=self.bucket, Key=full_key, IfMatch=f'"{if_etag}"'
                    )
                return
            except StorageError as exc:
                if refused_as_existing(exc):
                    raise ObjectChanged(key) from exc
                if exc.code in ("404", "NoSuchKey", "NotFound"):
                    return
                if exc.code not in _NO_CONDITION_CODES:
                    raise
        with self._errors():
            await client.delete_object(Bucket=self.bucket, Key=full_key)

    async def exists(self, key: str) -> bool:
        """Whether `key` exists (a HEAD request; 404 means no)."""
        full_key = self._full_key(key)
        client = await self._get_client()
        try:
            with self._errors():
                await client.head_object(Bucket=self.bucket, Key=full_key)
        except StorageError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def presigned_url(self, key: str, expires_seconds: int = 86400) -> str:
        """A presigned GET URL for `key`, valid for `expires_seconds` (at most 7 days)."""
        if not 1 <= expires_seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_seconds must be between 1 and {MAX_PRESIGN_SECONDS}")
        full_key = self._full_key(key)
        client = await self._get_client()
        with self._errors():
            url = await client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": full_key},
                ExpiresIn=expires_seconds,
            )
        return str(url)

    async def probe(self) -> None:
        """Write and delete a tiny object under the prefix: proves bucket, credentials, rights."""
        full_key = self._full_key(f"{_PROBE_PREFIX}{uuid.uuid4().hex}")
        client = await self._get_client()
        with self._errors():
            await client.put_object(
                Bucket=self.bucket, Key=full_key, Body=b"spool probe", ContentType="text/plain"
            )
            await client.delete_object(Bucket=self.bucket, Key=full_key)

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under the storage's prefix that start with `prefix`, relative to the storage."""
        if "\x00" in prefix:
            raise ValueError("prefix contains a NUL character")
        base = f"{self.prefix}/" if self.prefix else ""
        client = await self._get_client()
        keys: list[str] = []
        with self._errors():
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            async for page in pages:
                keys.extend(item["Key"][len(base) :] for item in page.get("Contents", []))
        return sorted(keys)

    async def head(self, key: str) -> ObjectInfo | None:
        """Size and content type of `key` (HeadObject); None for a missing key."""
        full_key = self._full_key(key)
        client = await self._get_client()
        try:
            with self._errors():
                answer = await client.head_object(Bucket=self.bucket, Key=full_key)
        except StorageError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        etag = answer.get("ETag")
        version_id = answer.get("VersionId")
        return ObjectInfo(
            int(answer["ContentLength"]),
            answer.get("ContentType"),
            etag=etag.strip('"') if etag else None,
            version_id=version_id if version_id not in (None, "null") else None,
            owner=(answer.get("Metadata") or {}).get(_S3_OWNER),
        )

    async def read(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """GetObject, with a `Range` unless the whole object is asked for."""
        full_key = self._full_key(key)
        extra = {} if start == 0 and end is None else {"Range": range_header(start, end)}
        client = await self._get_client()
        with self._errors():
            answer = await client.get_object(Bucket=self.bucket, Key=full_key, **extra)
        body = answer["Body"]
        try:
            while chunk := await body.read(READ_CHUNK):
                yield chunk
        finally:
            body.close()  # a reader that stopped early must not keep the connection busy


_HTTP_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    412: "Precondition Failed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _redact_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


# ---------------------------------------------------------------------------------------------
# Local folder


def _file_version(stat: os.stat_result) -> str:
    """A file's version: a file put in its place has another inode, one written over in place
    another modification time."""
    return f"{stat.st_ino}-{stat.st_mtime_ns}"


class LocalStorage:
    """Objects as files under `root`: the embedded default, and the same interface as S3.

    Uploads are copied to a hidden temp file beside the target and renamed into place, so a
    reader never sees half a file and a cancelled upload leaves nothing. Keys are checked and the
    resolved path must stay under the root (which also catches symlinks pointing out of it).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.description = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStorage({self.description})"

    def _path(self, key: str) -> Path:
        _check_key(key)
        root = self.root.resolve()
        path = (root / key).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ValueError(f"object key escapes the storage root: {key!r}")
        return path

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str | None = None,
        on_progress: UploadProgress | None = None,
        cancel: asyncio.Event | None = None,
        owner: str | None = None,
        if_absent: bool = False,
    ) -> StoredObject:
        """Copy `path` to `key` in chunks (cancel is checked between them), then rename it into
        place. `content_type` is accepted for the protocol's sake; files do not keep one.

        `owner` is written to a hidden file beside the object (`.spool-owner-<digest>`). With
        `if_absent` the copy is hard-linked into place, which the kernel refuses when a file is
        there already (`ObjectExists`), where a rename would replace it.
        """
        target = self._path(key)
        size = (await asyncio.to_thread(path.stat)).st_size
        progress = _ProgressThrottle(size, on_progress)
        if _cancelled(cancel):
            raise StorageCancelled(f"upload of {key} cancelled")
        try:
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{exc.strerror}: {target.parent}", retryable=False) from exc
        temp = target.with_name(f"{_LOCAL_TEMP_PREFIX}{uuid.uuid4().hex}")
        digest = hashlib.md5(usedforsecurity=False)
        sha256 = Sha256()
        try:
            with path.open("rb") as src, temp.open("wb") as dst:
                sent = 0
                while True:
                    if _cancelled(cancel):
                        raise StorageCancelled(f"upload of {key} cancelled")
                    chunk = await asyncio.to_thread(src.read, _LOCAL_CHUNK)
                    if not chunk:
                        break
                    await asyncio.to_thread(dst.write, chunk)
                    digest.update(chunk)
                    sha256.add(chunk)
                    sent += len(chunk)
                    progress.advance(sent)
            if _cancelled(cancel):
                raise StorageCancelled(f"upload of {key} cancelled")
            if if_absent:
                try:
                    await asyncio.to_thread(os.link, temp, target)
                except FileExistsError:
                    raise ObjectExists(key) from None
                temp.unlink()
            else:
                await asyncio.to_thread(os.replace, temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        stat = await asyncio.to_thread(target.stat)
        if owner is not None:
            await asyncio.to_thread(self._write_owner, target, owner)
        progress.finish()
        return StoredObject(
            key=key,
            size=size,
            etag=digest.hexdigest(),
            url=target.as_uri(),
            version_id=_file_version(stat),
            sha256=sha256.hexdigest,  # a folder answers no checksum: not checked
        )

    @staticmethod
    def _owner_file(target: Path) -> Path:
        # Named by a digest: a fixed length, however near the file system's limit the name is.
        digest = hashlib.sha256(target.name.encode()).hexdigest()[:32]
        return target.with_name(f"{_LOCAL_OWNER_PREFIX}{digest}")

    def _write_owner(self, target: Path, owner: str) -> None:
        # Written beside and renamed into place, so a reader sees the old owner or the new one.
        temp = target.with_name(f"{_LOCAL_TEMP_PREFIX}{uuid.uuid4().hex}")
        temp.write_text(owner)
        os.replace(temp, self._owner_file(target))

    async def delete(self, key: str, *, if_etag: str | None = None) -> None:
        """Remove `key` (a missing file is fine), its owner note, and any folders that leaves
        empty. A file has no ETag to hold the delete to: `if_etag` is not checked here."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._owner_file(path).unlink(missing_ok=True)
        root = self.root.resolve()
        parent = path.parent
        while parent != root and parent.is_relative_to(root):
            try:
                parent.rmdir()
            except OSError:
                break  # not empty (or gone): stop climbing
            parent = parent.parent

    async def exists(self, key: str) -> bool:
        """Whether a file exists at `key`."""
        return self._path(key).is_file()

    async def presigned_url(self, key: str, expires_seconds: int = 86400) -> str:
        """Nothing: a folder serves no links of its own. The API serves its files through
        signed Spool links instead (`adapters.file_links`); a `file://` path would only show
        the server's disk to a client that cannot open it."""
        raise StorageError(
            "NoLinks: a local folder has no links of its own; use a Spool link", code="NoLinks"
        )

    async def probe(self) -> None:
        """Create the root if needed, then write and delete a tiny file in it."""
        probe = self.root / f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"spool probe")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"{exc.strerror}: {self.root}", retryable=False) from exc

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Every stored key starting with `prefix` (temp files of running uploads excluded)."""
        return await asyncio.to_thread(self._list_keys, prefix)

    def _list_keys(self, prefix: str) -> list[str]:
        root = self.root.resolve()
        if not root.is_dir():
            return []
        keys: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                if name.startswith((_LOCAL_TEMP_PREFIX, _PROBE_PREFIX, _LOCAL_OWNER_PREFIX)):
                    continue
                key = (Path(dirpath) / name).relative_to(root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def head(self, key: str) -> ObjectInfo | None:
        """The file's size, version and owner; None when there is no file at `key`. Files keep
        no content type, and no ETag short of reading them whole."""
        return await asyncio.to_thread(self._head, key)

    def _head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        try:
            owner: str | None = self._owner_file(path).read_text().strip() or None
        except FileNotFoundError:
            owner = None
        return ObjectInfo(stat.st_size, version_id=_file_version(stat), owner=owner)

    async def read(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The file's bytes from `start` to `end` (inclusive), read in a thread chunk by chunk."""
        range_header(start, end)  # the same checks as the other backends
        path = self._path(key)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise StorageError(f"NoSuchKey: {key}", code="NoSuchKey") from None
        try:
            await asyncio.to_thread(f.seek, start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = await asyncio.to_thread(
                    f.read, READ_CHUNK if left is None else min(READ_CHUNK, left)
                )
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def abort_unfinished(self, upload: str) -> None:
        """Nothing to abort: a file is written whole or removed on the spot."""

    async def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------------------------------
# URLs


_S3_PARAMS = ("endpoint", "region", "path_style", "access_key", "secret_key")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def storage_from_url(url: str | None, *, data_dir: Path) -> ObjectStorage:
    """The storage a `SPOOL_STORAGE_URL`-style URL names.

    - `None` or `""`: a `LocalStorage` in `data_dir / "storage"`.
    - `file:///abs/path`: a `LocalStorage` there.
    - `s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true`:
      an `S3Storage`. Credentials come from `access_key` / `secret_key` query parameters when
      given, else from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, else botocore's own chain
      (instance roles and the like).

    Anything else raises `ValueError` saying what is wrong; messages never repeat a secret.
    """
    if not url:
        return LocalStorage(data_dir / "storage")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _local_from_url(parts.netloc, parts.path, parts.query)
    if scheme == "s3":
        return _s3_from_url(parts.netloc, parts.path, parts.query)
    shown = f"{scheme}://" if scheme else "a URL without a scheme"
    raise ValueError(
        f"unsupported storage URL {shown}: expected s3://bucket/prefix or file:///path"
    )


def _local_from_url(netloc: str, path: str, query: str) -> LocalStorage:
    if netloc not in ("", "localhost"):
        raise ValueError(
            f"file storage URL must be file:///absolute/path (got host {netloc!r}; "
            "use three slashes)"
        )
    if query:
        raise ValueError("file storage URL takes no query parameters")
    local = unquote(path)
    if not local.startswith("/"):
        raise ValueError("file storage URL needs an absolute path: file:///absolute/path")
    if "\x00" in local:
        raise ValueError("file storage URL path contains a NUL character")
    return LocalStorage(Path(local))


def _s3_from_url(netloc: str, path: str, query: str) -> S3Storage:
    if "@" in netloc:
        raise ValueError(
            "s3 storage URL must not carry credentials before the bucket; use access_key and "
            "secret_key query parameters or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    bucket = netloc
    if not bucket:
        raise ValueError("s3 storage URL needs a bucket: s3://bucket/prefix")
    if not _BUCKET.match(bucket):
        raise ValueError(f"s3 storage URL has an invalid bucket name: {bucket!r}")
    prefix = unquote(path).strip("/")
    if prefix:
        _check_key(prefix, what="s3 storage URL prefix")

    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _S3_PARAMS:
            raise ValueError(
                f"unknown s3 storage URL parameter {name!r}; known: {', '.join(_S3_PARAMS)}"
            )
        if name in params:
            raise ValueError(f"s3 storage URL parameter {name!r} is given twice")
        params[name] = value

    endpoint = params.get("endpoint") or None
    if endpoint is not None:
        ep = urlsplit(endpoint)
        # Checked first so that no message below can echo a password from the endpoint.
        if "@" in ep.netloc:
            raise ValueError("s3 storage URL endpoint must not carry credentials")
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise ValueError(
                f"s3 storage URL endpoint must be http(s)://host[:port], got {endpoint!r}"
            )
        try:
            ep.port  # noqa: B018 - only to validate it
        except ValueError:
            raise ValueError(f"s3 storage URL endpoint has a bad port: {endpoint!r}") from None

    path_style = True
    if "path_style" in params:
        flag = params["path_style"].lower()
        if flag not in _TRUE | _FALSE:
            raise ValueError("s3 storage URL parameter path_style must be true or false")
        path_style = flag in _TRUE

    access_key = params.get("access_key") or None
    secret_key = params.get("secret_key") or None
    if (access_key is None) != (secret_key is None):
        raise ValueError("s3 storage URL needs both access_key and secret_key, or neither")
    if access_key is None:
        access_key = os.environ.get("AWS_ACCESS_KEY_ID") or None
        secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY") or None

    return S3Storage(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region=params.get("region") or None,
        access_key=access_key,
        secret_key=secret_key,
        path_style=path_style,
    )
