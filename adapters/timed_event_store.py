"""An EventStore that measures its appends, for `/metrics` (`spool_event_store_append_seconds`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from spool.adapters.event_store import AppendResult, EventStore, StreamAppend
from spool.domain.events import NewEvent

REGISTRY = CollectorRegistry(auto_describe=True)
"""This process's own measurements (not the global registry: tests build many apps)."""

APPEND_SECONDS = Histogram(
    "spool_event_store_append_seconds",
    "Time to append to the event store from this process, commit included",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)

# A store method may call another (append_many once called itself): only the outermost is timed.
_timing: ContextVar[bool] = ContextVar("spool_timing_append", default=False)


class TimedEventStore(EventStore):
    """The same store; each append's wall time lands in `APPEND_SECONDS`."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        **kw: Any,
    ) -> AppendResult:
        if _timing.get():
            return await super().append(stream_id, events, expected_version, **kw)
        token = _timing.set(True)
        started = time.perf_counter()
        try:
            return await super().append(stream_id, events, expected_version, **kw)
        finally:
            APPEND_SECONDS.labels("append").observe(time.perf_counter() - started)
            _timing.reset(token)

    async def append_many(self, appends: Sequence[StreamAppend], **kw: Any) -> list[AppendResult]:
        if _timing.get():
            return await super().append_many(appends, **kw)
        token = _timing.set(True)
        started = time.perf_counter()
        try:
            return await super().append_many(appends, **kw)
        finally:
            APPEND_SECONDS.labels("append_many").observe(time.perf_counter() - started)
            _timing.reset(token)
