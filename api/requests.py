"""Request ids: every request gets one (or keeps the caller's), echoed as `x-request-id`."""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

from litestar import Request

from domain.events import Metadata


class _Ids:
    """UUID-shaped request ids: 60 random bits per process, then a counter.

    A fresh uuid4 per request cost the dashboard endpoint a twentieth of its time; ids only
    need to be unique, and a forked child draws its own random part.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        r = os.urandom(8).hex()
        self.prefix = f"{r[0:8]}-{r[8:12]}-4{r[12:15]}-"
        self.counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def next(self) -> str:
        n = next(self.counter)
        return f"{self.prefix}{(n >> 48) & 0x3FFF | 0x8000:04x}-{n & 0xFFFFFFFFFFFF:012x}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reseed)


def new_request_id() -> str:
    """A new, unique request id in the shape of a UUID."""
    return _ids.next()


def request_id(request: Request[Any, Any, Any]) -> str:
    rid: str = request.scope.get("state", {}).get("request_id") or str(uuid.uuid4())
    return rid


def command_metadata(request: Request[Any, Any, Any], actor: str) -> Metadata:
    """Metadata for events a request causes: the request id also starts the correlation."""
    rid = request_id(request)
    return Metadata(correlation_id=rid, causation_id=rid, actor=actor, request_id=rid)
