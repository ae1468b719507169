"""Which storage an account's uploads go to: its own, when it configured one, else the default.

The `storage_configs` projection (one row per account that has a storage) keeps the current
`StorageConfigured` event, sealed credentials included, so a lookup is one primary-key query.
Credentials are opened (decrypted) only here, when a configuration is first seen.

`AccountStorages` holds one built storage (one client) per storage target, and remembers each
account's for a short while (30 s by default; a node asks again for every upload): uploads of
one account share a connection pool, and a changed or removed configuration is seen within
that time. A storage that is dropped is closed only after a grace period, because an upload that
picked it up a moment ago may still be running on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeAlias

import asyncpg
import msgspec

from spool.adapters import secret_box
from spool.adapters.read_models import storage_configs
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import ObjectStorage, S3Storage, StorageError, account_prefix
from spool.domain.storage_config import Provider, StorageConfigured
from spool.domain.storage_providers import PROVIDERS


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


def build_storage(
    spec: StorageSpec, credentials: Credentials, *, guard: UrlGuard | None
) -> ObjectStorage:
    """A client for `spec` with `credentials`. Nothing is contacted until first use.

    `guard` judges the address of every connection the client opens, so an endpoint name that
    passed the check when it was configured cannot later rebind to a private address; None
    only for a storage the operator configured (the cluster's own may well be private).

    The provider's declaration (`domain.storage_providers.PROVIDERS`) says how to reach it:
    S3-compatible ones through `S3Storage` with its endpoint, addressing and signing region;
    Azure Blob (block uploads) through `adapters.blob_storage`.
    """
    provider = PROVIDERS[spec.provider]
    if provider.protocol == "azure-blob":
        from spool.adapters.blob_storage import (
            BlobStorage,  # imported late: only Azure users need it
        )

        if not spec.account_name:
            raise ValueError("an Azure Blob storage needs an account name")
        return BlobStorage(
            account_name=spec.account_name,
            container=spec.bucket,
            prefix=spec.prefix,
            endpoint=spec.endpoint,
            account_key=credentials.account_key,
            sas_token=credentials.sas_token,
            guard=guard,
        )
    if not credentials.access_key or not credentials.secret_key:
        raise ValueError("an S3-compatible storage needs an access key and a secret key")
    endpoint = spec.endpoint or provider.endpoint
    if endpoint is None and provider.endpoint_for_region is not None:
        if not spec.region:
            raise ValueError(f"A storage on {provider.label} needs an endpoint or a region")
        endpoint = provider.endpoint_for_region(spec.region)
    return S3Storage(
        bucket=spec.bucket,
        prefix=spec.prefix,
        endpoint_url=endpoint,
        region=spec.region or provider.signing_region,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        path_style=spec.path_style,
        addressing_style="virtual" if provider.virtual_hosted and not spec.path_style else None,
        guard=guard,
    )


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
    raw = await storage_configs.stored_config(pool, account_id)
    return None if raw is None else msgspec.json.decode(raw, type=StorageConfigured)


async def storage_for(
    pool: asyncpg.Pool,
    secret_key: str,
    account_id: str,
    default: ObjectStorage,
    *,
    guard: UrlGuard | None,
) -> ObjectStorage:
    """The account's own storage (a new client: the caller closes it), or `default` as is.

    Uncached; long-lived callers (the upload stage) should use `AccountStorages` instead.
    """
    configured = await current_config(pool, account_id)
    if configured is None:
        return default
    credentials = await open_credentials(pool, secret_key, account_id, configured)
    return build_storage(spec_of(configured), credentials, guard=guard)


_Target: TypeAlias = tuple[str, StorageSpec, bytes]
"""Where a storage goes and as whom: (account id, spec, SHA-256 of the opened credentials).

The account id is part of it so that two accounts never share a client, even with equal keys.
"""


class _Entry(msgspec.Struct):
    target: _Target | None  # None: the account uses the default
    fingerprint: bytes | None
    checked_at: float


class AccountStorages:
    """Each account's storage, and each job's own, with one client per storage target.

    `get(account_id)` answers from its cache for `ttl` seconds; after that it reads the
    account's row in `storage_configs` again (one primary-key query) and keeps the same client
    unless the configuration changed. With `ttl=0` (a node) every upload reads the row, so a
    storage configured a moment ago is what the next upload uses.

    Clients are held per target: account, spec and credentials. A configuration saved again
    with the same settings, or jobs that each name the same storage of their own (each sealed
    apart, so each with a different ciphertext), reuse one client and its connection pool.
    At most `max_targets` are held; the least recently used beyond that, like a client that
    `forget` drops, is closed `close_grace` seconds later, when any upload handed it has long
    finished. `aclose()` closes everything now.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        secret_key: str,
        default: ObjectStorage,
        *,
        guard: UrlGuard | None,
        ttl: float = 30.0,
        close_grace: float = 900.0,
        max_targets: int = 32,
    ) -> None:
        self.pool = pool
        self.default = default
        self.guard = guard
        """Judges every connection to an account's own endpoint (`build_storage`)."""
        self.ttl = ttl
        self.close_grace = close_grace
        self.max_targets = max_targets
        self.built = 0
        """How many storages (each with its own client) this cache has built so far."""
        self._secret_key = secret_key
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: list[ObjectStorage] = []
        # Least recently used first.
        self._targets: OrderedDict[_Target, ObjectStorage] = OrderedDict()
        # A per-job storage's sealed credentials -> its target: each job's are opened once.
        self._sealed: OrderedDict[tuple[str, str], _Target] = OrderedDict()

    def key_prefix(self, storage: ObjectStorage, account_id: str) -> str:
        """Where `account_id`'s keys go on `storage`: under `accounts/<account_id>` on the
        default storage, which every account shares; at the root of a storage of its own."""
        return account_prefix(account_id) if storage is self.default else ""

    def held(self) -> list[ObjectStorage]:
        """Every storage this cache built and has not closed yet (not the default)."""
        return [*self._targets.values(), *self._retired]

    async def for_job(self, account_id: str, override: StorageConfigured | None) -> ObjectStorage:
        """Where one job's files go: its own `storage` if it named one, else its account's."""
        if override is None:
            return await self.get(account_id)
        sealed = (account_id, override.sealed_credentials.ciphertext)
        target = self._sealed.get(sealed)
        if target is not None:
            storage = self._use(target)
            if storage is not None:
                self._sealed.move_to_end(sealed)
                return storage
        target, storage = await self._open(account_id, override)
        self._sealed[sealed] = target
        while len(self._sealed) > 16 * self.max_targets:
            self._sealed.popitem(last=False)
        return storage

    async def get(self, account_id: str) -> ObjectStorage:
        """The storage `account_id`'s uploads go to now. Never close what this returns."""
        entry = self._entries.get(account_id)
        if entry is not None and time.monotonic() - entry.checked_at < self.ttl:
            storage = self._held_for(entry)
            if storage is not None:
                return storage
        lock = self._locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(account_id)
            now = time.monotonic()
            if entry is not None and now - entry.checked_at < self.ttl:
                storage = self._held_for(entry)
                if storage is not None:
                    return storage
            raw = await storage_configs.stored_config(self.pool, account_id)
            fingerprint = None if raw is None else bytes(raw)
            if entry is not None and entry.fingerprint == fingerprint:
                storage = self._held_for(entry)
                if storage is not None:
                    entry.checked_at = now
                    return storage
            if raw is None:
                self._entries[account_id] = _Entry(None, None, now)
                return self.default
            configured = msgspec.json.decode(raw, type=StorageConfigured)
            target, storage = await self._open(account_id, configured)
            self._entries[account_id] = _Entry(target, fingerprint, now)
            return storage

    def _held_for(self, entry: _Entry) -> ObjectStorage | None:
        """The storage an entry names, or None when its client was dropped meanwhile."""
        return self.default if entry.target is None else self._use(entry.target)

    def _use(self, target: _Target) -> ObjectStorage | None:
        storage = self._targets.get(target)
        if storage is not None:
            self._targets.move_to_end(target)
        return storage

    async def _open(
        self, account_id: str, configured: StorageConfigured
    ) -> tuple[_Target, ObjectStorage]:
        """The held storage for what `configured` names, built (and held) if there is none."""
        credentials = await open_credentials(self.pool, self._secret_key, account_id, configured)
        spec = spec_of(configured)
        target = (account_id, spec, hashlib.sha256(msgspec.json.encode(credentials)).digest())
        # No await from here on: two callers cannot both build the same target.
        storage = self._use(target)
        if storage is None:
            storage = build_storage(spec, credentials, guard=self.guard)
            self.built += 1
            self._targets[target] = storage
            while len(self._targets) > self.max_targets:
                _, dropped = self._targets.popitem(last=False)
                self._retire(dropped)
        return target, storage

    def forget(self, account_id: str) -> None:
        """Drop an account's entry and its client now (e.g. right after it changed)."""
        entry = self._entries.pop(account_id, None)
        if entry is not None and entry.target is not None:
            storage = self._targets.pop(entry.target, None)
            if storage is not None:
                self._retire(storage)

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
        self._entries.clear()
        self._sealed.clear()
        for task in list(self._closing):
            task.cancel()
        # Retired clients are closed here too: their close_later tasks were just cancelled.
        storages: Sequence[ObjectStorage] = [*self._targets.values(), *self._retired]
        self._targets.clear()
        self._retired = []
        for storage in storages:
            with contextlib.suppress(Exception):
                await storage.close()
