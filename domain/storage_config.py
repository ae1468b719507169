"""A user's own object storage: where their jobs upload instead of the cluster default.

An account has at most one storage configuration at a time. Configuring a provider replaces
whatever was there; removing names the provider being removed, so `DELETE /user/gcs` cannot
silently drop an S3 configuration. The events live on the account stream (`account-<id>`).

Credentials never appear here in clear: the event holds them sealed (AES-256-GCM under the
account's own data key, see `adapters.secret_box`), plus a masked key id that is safe to show.
Destroying the account's data key makes every sealed credential in the log unreadable
(crypto-shredding) without touching the append-only log.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from spool.domain.account import stream_id
from spool.domain.aggregate import Aggregate, Step
from spool.domain.errors import DomainError
from spool.domain.events import Event, event
from spool.domain.storage_providers import PROVIDER_NAMES as PROVIDER_NAMES
from spool.domain.storage_providers import Provider as Provider


class Sealed(msgspec.Struct, frozen=True, kw_only=True):
    """A secret encrypted under an account's data key: safe to store anywhere, even the log.

    `key_version` says which generation of the account's data key sealed it (a key destroyed
    and then re-created gets a new version, so old ciphertexts stay dead). `nonce` and
    `ciphertext` are standard base64; `alg` names the cipher so it can change later.
    """

    key_version: int
    nonce: str
    ciphertext: str
    alg: str = "AES-256-GCM"


@event
class StorageConfigured(Event, frozen=True, kw_only=True):
    """An account's uploads go to this storage from now on (replacing any earlier one).

    `bucket` is the bucket (S3, GCS, OSS) or the container (Azure Blob). `endpoint` is the
    S3-compatible endpoint URL or, for Azure, the blob service URL. `access_key_hint` is a
    masked key id (`AKIA…WXYZ`), or for Azure the storage account name with the kind of
    credential. `sealed_credentials` holds the provider's secrets, sealed.
    """

    account_id: str
    provider: Provider
    bucket: str
    region: str | None = None
    endpoint: str | None = None
    prefix: str = ""
    path_style: bool = True
    access_key_hint: str = ""
    account_name: str | None = None
    sealed_credentials: Sealed


@event
class StorageRemoved(Event, frozen=True, kw_only=True):
    """An account's uploads go back to the cluster default."""

    account_id: str
    provider: Provider


class StorageState(msgspec.Struct, frozen=True, kw_only=True):
    """The fold of an account stream's storage events: the current configuration, if any."""

    version: int = 0
    """The stream version this state was read at (every event of the stream counts)."""
    current: StorageConfigured | None = None


def evolve(state: StorageState | None, e: Event, at: datetime, version: int) -> StorageState:
    """`state` after event `e` at stream `version`; other account events only move the version."""
    if isinstance(e, StorageConfigured):
        return StorageState(version=version, current=e)
    if isinstance(e, StorageRemoved):
        return StorageState(version=version, current=None)
    return StorageState(version=version, current=state.current if state else None)


AGGREGATE: Aggregate[StorageState] = Aggregate(
    name="storage",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(StorageConfigured, StorageRemoved),
    initial=StorageState(),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types


def fold(events: Iterable[Step]) -> StorageState:
    """The storage state of an account from its stream's events, in order."""
    return AGGREGATE.fold(events) or StorageState()


class StorageNotConfigured(DomainError):
    """A removal named a provider the account has not configured."""


def configure(state: StorageState, configured: StorageConfigured) -> list[Event]:
    """Decide the events that make `configured` the account's storage (always allowed)."""
    return [configured]


def remove(state: StorageState, *, account_id: str, provider: Provider) -> list[Event]:
    """Decide the events that drop the account's `provider` storage; refuse any other."""
    current = state.current
    if current is None or current.provider != provider:
        raise StorageNotConfigured(f"No {PROVIDER_NAMES[provider]} storage is configured")
    return [StorageRemoved(account_id=account_id, provider=provider)]


def mask_key_id(key_id: str) -> str:
    """A key id that is safe to show: `AKIA…WXYZ`; short ids show only their last 2 characters.

    An access key id is not the secret, but it still identifies a credential, so most of it
    stays hidden; long ids keep 4 characters either side so a user can tell their keys apart.
    """
    key_id = key_id.strip()
    if len(key_id) >= 16:
        return f"{key_id[:4]}…{key_id[-4:]}"
    if len(key_id) >= 8:
        return f"…{key_id[-2:]}"
    return "…"
