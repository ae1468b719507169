"""`Idempotency-Key` on the requests that create jobs and tasks: a retry gets the first answer.

This module reads the key from the request and renders answers; the append and the record
are the application layer's (`application/idempotency.py`).

The record of the first request is appended in the same transaction as the jobs it created, so
a request either created its jobs and its record or neither: a client that lost the answer (a
timeout, a dropped connection, the API killed) can send the same request again and never gets a
second job. Two copies racing each other both get the winner's answer.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.params import Parameter

from spool.adapters.event_store import EventStore
from spool.api.auth import Principal
from spool.application.idempotency import Idempotent, earlier_record
from spool.domain import idempotency

HEADER = "idempotency-key"
REPLAYED = "idempotent-replayed"


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


def replay(first: idempotency.RequestRecorded) -> Response[Any]:
    """The first request's answer again, marked as such."""
    return Response(
        first.answer.encode(),
        status_code=first.status,
        media_type=MediaType.JSON,
        headers={REPLAYED: "true"},
    )


async def earlier_answer(store: EventStore, idem: Idempotent) -> Response[Any] | None:
    """The answer the first request with this key got; IdempotencyKeyReused (422) if that was
    another request."""
    first = await earlier_record(store, idem)
    return None if first is None else replay(first)


def created(answer: msgspec.Struct, winner: idempotency.RequestRecorded | None) -> Response[Any]:
    """201 and `answer`, or the winner's answer when a copy of the request got there first."""
    return Response(answer, status_code=201) if winner is None else replay(winner)
