"""Which storage an account's uploads go to: its own, when it configured one, else the default.

The `storage_configs` projection (one row per account that has a storage) keeps the current
`StorageConfigured` event, sealed credentials included, so a lookup is one primary-key query.
Credentials are opened (decrypted) only here, at the moment a client is built.

`AccountStorages` caches one built storage per account for a short while (30 s by default):
uploads of one account share a connection pool, and a changed or removed configuration is seen
within that time. A storage that is replaced is closed only after a grace period, because an
upload that picked it up a moment ago may still be running on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
import sqlalchemy as sa
from aiobotocore.config import AioConfig
from sqlalchemy.dialects import postgresql as pg

from adapters import secret_box
from adapters.storage import ObjectStorage, S3Storage, StorageError
from adapters.tables import metadata
from domain.storage_config import Provider, StorageConfigured

# The `storage_configs` projection's table (written by reactors.projections.storage_configs).
# `config` is the whole current StorageConfigured event: non-secret fields and sealed secrets.
storage_configs = sa.Table(
    "storage_configs",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("config", pg.JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

GCS_ENDPOINT = "https://storage.googleapis.com"
"""GCS's S3-interoperable XML API; HMAC keys sign SigV4 requests there."""


def oss_endpoint(region: str) -> str:
    """Alibaba OSS's public endpoint for a region such as `cn-hangzhou` (or `oss-cn-hangzhou`)."""
    region = region.strip()
    if not region.startswith("oss-"):
        region = f"oss-{region}"
    return f"https://{region}.aliyuncs.com"


class Credentials(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The secrets of one storage, as sealed into `StorageConfigured.sealed_credentials`.

    S3, GCS (HMAC) and OSS use `access_key` + `secret_key`; Azure Blob uses `account_key` or
    `sas_token`.
    """

    access_key: str | None = None
    secret_key: str | None = None
    account_key: str | None = None
    sas_token: str | None = None

    def __repr__(self) -> str:
        # Never let a secret reach a log line through a repr.
        return "Credentials(***)"


class StorageSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The non-secret description of a storage: what `StorageConfigured` carries in clear."""

    provider: Provider
    bucket: str
    region: str | None = None
    endpoint: str | None = None
    prefix: str = ""
    path_style: bool = True
    account_name: str | None = None


def spec_of(configured: StorageConfigured) -> StorageSpec:
    """The spec an event describes."""
    return StorageSpec(
        provider=configured.provider,
        bucket=configured.bucket,
        region=configured.region,
        endpoint=configured.endpoint,
        prefix=configured.prefix,
        path_style=configured.path_style,
        account_name=configured.account_name,
    )


class _VirtualHostedSession:
    """Wraps an aiobotocore session so its S3 clients use virtual-hosted addressing.

    `S3Storage` offers path style or "auto", and with a custom endpoint botocore's "auto" means
    path style, which Alibaba OSS refuses (SecondLevelDomainForbidden). Until `S3Storage` takes
    an addressing style of its own, this forces `bucket.endpoint-host` URLs for OSS clients.
    """

    def __init__(self, session: Any) -> None:
        self._session = session

    def create_client(self, *args: Any, config: AioConfig | None = None, **kwargs: Any) -> Any:
        virtual = AioConfig(s3={"addressing_style": "virtual"})
        merged = config.merge(virtual) if config is not None else virtual
        return self._session.create_client(*args, config=merged, **kwargs)


def build_storage(spec: StorageSpec, credentials: Credentials) -> ObjectStorage:
    """A client for `spec` with `credentials`. Nothing is contacted until first use.

    - s3: the endpoint as given, path style unless switched off (MinIO and moto need it; AWS
      takes either).
    - gcs: GCS's XML API (or the given endpoint), path style, HMAC key as the key pair.
    - oss: virtual-hosted style (OSS refuses path style), endpoint from the region if not given.
    - blob: Azure Blob Storage (block uploads) through `adapters.blob_storage`.
    """
    if spec.provider == "blob":
        from adapters.blob_storage import BlobStorage  # imported late: only Azure users need it

        if not spec.account_name:
            raise ValueError("an Azure Blob storage needs an account name")
        return BlobStorage(
            account_name=spec.account_name,
            container=spec.bucket,
            prefix=spec.prefix,
            endpoint=spec.endpoint,
            account_key=credentials.account_key,
            sas_token=credentials.sas_token,
        )
    if not credentials.access_key or not credentials.secret_key:
        raise ValueError("an S3-compatible storage needs an access key and a secret key")
    endpoint = spec.endpoint
    path_style = spec.path_style
    if spec.provider == "gcs":
        endpoint = endpoint or GCS_ENDPOINT
    elif spec.provider == "oss" and endpoint is None:
        if not spec.region:
            raise ValueError("an Alibaba OSS storage needs an endpoint or a region")
        endpoint = oss_endpoint(spec.region)
    storage = S3Storage(
        bucket=spec.bucket,
        prefix=spec.prefix,
        endpoint_url=endpoint,
        # GCS ignores the region in SigV4 but needs one to sign with; "auto" is what it expects.
        region=spec.region or ("auto" if spec.provider == "gcs" else None),
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        path_style=path_style,
    )
    if spec.provider == "oss" and not path_style:
        storage._session = _VirtualHostedSession(storage._session)
    return storage


async def open_credentials(
    pool: asyncpg.Pool, secret_key: str, account_id: str, configured: StorageConfigured
) -> Credentials:
    """Decrypt an event's credentials; StorageError (not retryable) once they were shredded."""
    try:
        plain = await secret_box.open_(pool, secret_key, account_id, configured.sealed_credentials)
    except secret_box.SecretUnavailable as exc:
        raise StorageError(
            f"Storage credentials are no longer available ({exc}); configure the storage again",
            retryable=False,
            code="CredentialsUnavailable",
        ) from None
    return msgspec.json.decode(plain, type=Credentials)


async def current_config(pool: asyncpg.Pool, account_id: str) -> StorageConfigured | None:
    """The account's storage as the `storage_configs` projection has it, or None."""
    raw = await pool.fetchval(
        "SELECT config FROM storage_configs WHERE account_id = $1", account_id
    )
    return None if raw is None else msgspec.json.decode(raw, type=StorageConfigured)


async def storage_for(
    pool: asyncpg.Pool, secret_key: str, account_id: str, default: ObjectStorage
) -> ObjectStorage:
    """The account's own storage (a new client: the caller closes it), or `default` as is.

    Uncached; long-lived callers (the upload stage) should use `AccountStorages` instead.
    """
    configured = await current_config(pool, account_id)
    if configured is None:
        return default
    credentials = await open_credentials(pool, secret_key, account_id, configured)
    return build_storage(spec_of(configured), credentials)


class _Entry(msgspec.Struct):
    storage: ObjectStorage | None  # None: the account uses the default
    fingerprint: bytes | None
    checked_at: float


class AccountStorages:
    """A cached `storage_for`: one client per account, re-checked every `ttl` seconds.

    `get(account_id)` answers from the cache while the entry is fresh; after that it looks at
    the projection again and keeps the same client unless the configuration changed. Clients
    that are replaced (or dropped with `forget`) are closed `close_grace` seconds later, when
    any upload that was handed them has long finished; `aclose()` closes everything now.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        secret_key: str,
        default: ObjectStorage,
        *,
        ttl: float = 30.0,
        close_grace: float = 900.0,
    ) -> None:
        self.pool = pool
        self.default = default
        self.ttl = ttl
        self.close_grace = close_grace
        self._secret_key = secret_key
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: list[ObjectStorage] = []
        # Per-job storages, by account and sealed credentials (few, and kept for reuse).
        self._overrides: dict[tuple[str, str], ObjectStorage] = {}

    async def for_job(self, account_id: str, override: StorageConfigured | None) -> ObjectStorage:
        """Where one job's files go: its own `storage` if it named one, else its account's."""
        if override is None:
            return await self.get(account_id)
        key = (account_id, override.sealed_credentials.ciphertext)
        if key not in self._overrides:
            credentials = await open_credentials(self.pool, self._secret_key, account_id, override)
            self._overrides[key] = build_storage(spec_of(override), credentials)
        return self._overrides[key]

    async def get(self, account_id: str) -> ObjectStorage:
        """The storage `account_id`'s uploads go to now. Never close what this returns."""
        entry = self._entries.get(account_id)
        if entry is not None and time.monotonic() - entry.checked_at < self.ttl:
            return entry.storage or self.default
        lock = self._locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(account_id)
            now = time.monotonic()
            if entry is not None and now - entry.checked_at < self.ttl:
                return entry.storage or self.default
            raw = await self.pool.fetchval(
                "SELECT config FROM storage_configs WHERE account_id = $1", account_id
            )
            fingerprint = None if raw is None else bytes(raw)
            if entry is not None and entry.fingerprint == fingerprint:
                entry.checked_at = now
                return entry.storage or self.default
            storage: ObjectStorage | None = None
            if raw is not None:
                configured = msgspec.json.decode(raw, type=StorageConfigured)
                credentials = await open_credentials(
                    self.pool, self._secret_key, account_id, configured
                )
                storage = build_storage(spec_of(configured), credentials)
            if entry is not None and entry.storage is not None:
                self._retire(entry.storage)
            self._entries[account_id] = _Entry(storage, fingerprint, now)
            return storage or self.default

    def forget(self, account_id: str) -> None:
        """Drop an account's entry now (e.g. right after its configuration changed)."""
        entry = self._entries.pop(account_id, None)
        if entry is not None and entry.storage is not None:
            self._retire(entry.storage)

    def _retire(self, storage: ObjectStorage) -> None:
        self._retired.append(storage)

        async def close_later() -> None:
            await asyncio.sleep(self.close_grace)
            self._retired.remove(storage)
            with contextlib.suppress(Exception):
                await storage.close()

        task = asyncio.create_task(close_later())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close every client this cache built (not the default), retired ones included."""
        storages: Sequence[ObjectStorage] = [
            e.storage for e in self._entries.values() if e.storage is not None
        ]
        self._entries.clear()
        for task in list(self._closing):
            task.cancel()
        # Retired clients are closed here too: their close_later tasks were just cancelled.
        retired, self._retired = self._retired, []
        overrides = list(self._overrides.values())
        self._overrides.clear()
        for storage in [*storages, *retired, *overrides]:
            with contextlib.suppress(Exception):
                await storage.close()
