"""Idempotent creation: what a request creates goes in with its `Idempotency-Key` record, or not.

The record of the first request is appended in the same transaction as what it created
(docs/architecture.md, "Idempotency records"), so a retried request never creates twice. The
API reads the key from the request (`api/idempotency.py`); this module appends and replays.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from spool.adapters.account_policy_store import append_admitted
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.repository import record_many
from spool.domain import idempotency
from spool.domain.errors import ConcurrencyError, IdempotencyKeyReused
from spool.domain.events import Metadata, NewEvent

_encode = msgspec.json.Encoder().encode


class Idempotent(NamedTuple):
    """A request that carries a key: where its record lives and what makes it the same."""

    account_id: str
    key: str
    stream_id: str
    method: str
    path: str
    fingerprint: str


async def earlier_record(store: EventStore, idem: Idempotent) -> idempotency.RequestRecorded | None:
    """The record of the first request with this key; IdempotencyKeyReused if that was another
    request."""
    recorded = await store.read_stream(idem.stream_id, limit=1)
    if not recorded:
        return None
    first = recorded[0].data
    assert isinstance(first, idempotency.RequestRecorded)
    if first.fingerprint != idem.fingerprint:
        raise IdempotencyKeyReused("This Idempotency-Key was already used for a different request")
    return first


async def append_once(
    store: EventStore,
    appends: list[StreamAppend],
    answer: msgspec.Struct,
    idem: Idempotent | None,
    meta: Metadata,
    *,
    quota_account: str | None = None,
) -> idempotency.RequestRecorded | None:
    """Append what a request created, with its record if it has a key.

    With `quota_account`, the jobs it creates must fit that account's quotas (QuotaExceeded
    otherwise, and nothing is appended). None when this request's appends went in; the
    winner's record if a copy of it won.
    """
    if idem is None:
        await _append(store, appends, quota_account)
        return None
    record = idempotency.RequestRecorded(
        account_id=idem.account_id,
        key_digest=idempotency.key_digest(idem.key),
        method=idem.method,
        path=idem.path,
        fingerprint=idem.fingerprint,
        status=201,
        answer=_encode(answer).decode(),
    )
    try:
        await _append(
            store,
            [*appends, StreamAppend(idem.stream_id, [NewEvent(record, meta)], 0)],
            quota_account,
        )
    except ConcurrencyError:
        # What the request creates is new, so the clash is the key: a copy of it won.
        earlier = await earlier_record(store, idem)
        if earlier is None:
            raise
        return earlier
    return None


async def _append(
    store: EventStore, appends: list[StreamAppend], quota_account: str | None
) -> None:
    if quota_account is None:
        await record_many(store, appends)
    else:
        await append_admitted(store, quota_account, appends)
