"""`Idempotency-Key` on the requests that create jobs and tasks: a retry gets the first answer.

The record of the first request is appended in the same transaction as the jobs it created, so
a request either created its jobs and its record or neither: a client that lost the answer (a
timeout, a dropped connection, the API killed) can send the same request again and never gets a
second job. Two copies racing each other both get the winner's answer.
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.params import Parameter

from spool.adapters.account_policy_store import append_admitted
from spool.adapters.event_store import EventStore, StreamAppend
from spool.api.auth import Principal
from spool.domain import idempotency
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Metadata, NewEvent

HEADER = "idempotency-key"
REPLAYED = "idempotent-replayed"

_encode = msgspec.json.Encoder().encode


class Idempotent(NamedTuple):
    """A request that carries a key: where its record lives and what makes it the same."""

    account_id: str
    key: str
    stream_id: str
    method: str
    path: str
    fingerprint: str


IdempotencyKey = Annotated[
    str | None,
    Parameter(
        header=HEADER,
        required=False,
        description=(
            "Any unique string (a UUID, say), at most 255 printable ASCII characters. Sending "
            "the same request again with the same key creates nothing more and answers what "
            "the first request got, with `Idempotent-Replayed: true`; the same key with a "
            "different request is a 422."
        ),
    ),
]
"""The header as a handler parameter: read by the handler, and documented in OpenAPI."""


async def idempotency_of(
    request: Request[Any, Any, Any], principal: Principal, raw: str | None
) -> Idempotent | None:
    """The request's `Idempotency-Key`, checked (400 when malformed); None without one."""
    if raw is None:
        return None
    try:
        key = idempotency.check_key(raw)
    except idempotency.BadIdempotencyKey as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    method, path = request.method, request.url.path
    return Idempotent(
        account_id=principal.account_id,
        key=key,
        stream_id=idempotency.stream_id(principal.account_id, key),
        method=method,
        path=path,
        fingerprint=idempotency.fingerprint(method, path, await request.body()),
    )


async def earlier_record(store: EventStore, idem: Idempotent) -> idempotency.RequestRecorded | None:
    """The record of the first request with this key; 422 if that was another request."""
    recorded = await store.read_stream(idem.stream_id, limit=1)
    if not recorded:
        return None
    first = recorded[0].data
    assert isinstance(first, idempotency.RequestRecorded)
    if first.fingerprint != idem.fingerprint:
        raise HTTPException(
            status_code=422,
            detail="This Idempotency-Key was already used for a different request",
        )
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
        await store.append_many(appends)
    else:
        await append_admitted(store, quota_account, appends)


def replay(first: idempotency.RequestRecorded) -> Response[Any]:
    """The first request's answer again, marked as such."""
    return Response(
        first.answer.encode(),
        status_code=first.status,
        media_type=MediaType.JSON,
        headers={REPLAYED: "true"},
    )


async def earlier_answer(store: EventStore, idem: Idempotent) -> Response[Any] | None:
    """The answer the first request with this key got; 422 if that was another request."""
    first = await earlier_record(store, idem)
    return None if first is None else replay(first)


async def commit(
    store: EventStore,
    appends: list[StreamAppend],
    answer: msgspec.Struct,
    idem: Idempotent | None,
    meta: Metadata,
    *,
    quota_account: str | None = None,
) -> Response[Any]:
    """Append what a request created (with its record, if it has a key); 201 and `answer`.

    With `quota_account`, only if its jobs fit that account's quotas (see `append_once`).
    """
    winner = await append_once(store, appends, answer, idem, meta, quota_account=quota_account)
    return Response(answer, status_code=201) if winner is None else replay(winner)
