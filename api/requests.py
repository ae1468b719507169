"""Request ids: every request gets one (or keeps the caller's), echoed as `x-request-id`."""

from __future__ import annotations

import os
import uuid
from typing import Any

from litestar import Request

from spool.domain.events import Metadata


class _Ids:
    """UUID-shaped request ids, every one 122 fresh random bits from the OS.

    Unguessable, not merely unique: a trace is found by its request id, and an id that could
    be derived from another (a counter, a clock) let one account name another's requests. The
    random bytes are drawn a page at a time, since a uuid4 per request cost the dashboard
    endpoint a twentieth of its time; a forked child drops the parent's unused bytes.
    """

    _PAGE = 4096

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._bytes = b""
        self._at = 0

    def next(self) -> str:
        if self._at + 16 > len(self._bytes):
            self._bytes, self._at = os.urandom(self._PAGE), 0
        x = self._bytes[self._at : self._at + 16].hex()
        self._at += 16
        # The version (4) and variant (10xx) bits of a UUID, in place of 6 of the random ones.
        variant = "89ab"[int(x[16], 16) & 3]
        return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{variant}{x[17:20]}-{x[20:]}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reseed)


def new_request_id() -> str:
    """A new request id: a random UUID (version 4), unguessable from any other."""
    return _ids.next()


def request_id(request: Request[Any, Any, Any]) -> str:
    rid: str = request.scope.get("state", {}).get("request_id") or str(uuid.uuid4())
    return rid


def command_metadata(request: Request[Any, Any, Any], actor: str) -> Metadata:
    """Metadata for events a request causes: the request id also starts the correlation."""
    rid = request_id(request)
    return Metadata(correlation_id=rid, causation_id=rid, actor=actor, request_id=rid)
