"""Deleted files reach every API process through the log.

Whoever deletes a job's file (`DELETE /jobs/{id}/file` in any API process, a bulk `delete_file`
that the operations reactor carries out), its `FileDeleted` is the one signal: each API process
follows it and drops what it holds of that file, its HLS rendition and HLS viewers
(`api/media.py` `Media.forget`). So a single delete and a bulk one take the same path.

Like the `/ws` feed (`api/cluster_ws.py`) it keeps no checkpoint: it starts at the log's
readable head when its process first makes its HLS cache (a process that never made one holds
nothing to drop) and keeps its place across reconnects. A rendition whose file was deleted while
no API process on its folder followed is never served (`api/media.py` `_finished_job` refuses a
deleted file) and leaves the cache as the least recently played.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from spool.adapters.event_store import Checkpoint, EventStore
from spool.adapters.subscription import LogSubscription, Look
from spool.domain import job

log = logging.getLogger("spool.api.media")

FOLLOWED: frozenset[str] = frozenset({job.FileDeleted.__name__})

BATCH = 500


class DeletedFiles:
    """This process's follower of `FileDeleted`: `forget(job_id)` for each, in log order."""

    def __init__(
        self,
        store: EventStore,
        forget: Callable[[str], Awaitable[None]],
        *,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.forget = forget
        self._subscription = LogSubscription(
            store, what="deleted files", poll_interval=poll_interval, logger=log
        )
        self._at: Checkpoint | None = None
        self._expected: dict[str, set[asyncio.Future[None]]] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        """Set once it listens: a file deleted from then on is dropped."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._subscription.follow(self._catch_up, self._stop, on_listen=self._listening),
                name="deleted-files",
            )

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def expect(self, job_id: str) -> asyncio.Future[None]:
        """A future done once this follower has dropped the job's file (its next deletion)."""
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expected.setdefault(job_id, set()).add(seen)
        return seen

    def unexpect(self, job_id: str, seen: asyncio.Future[None]) -> None:
        waiting = self._expected.get(job_id)
        if waiting is not None:
            waiting.discard(seen)
            if not waiting:
                del self._expected[job_id]

    async def _listening(self) -> None:
        if self._at is None:  # a reconnect goes on from where it was
            self._at = await self.store.readable_head()
        self.ready.set()

    async def _catch_up(self, look: Look) -> None:
        if self._at is None or not look.concerns(FOLLOWED):
            return
        async for batch in self._subscription.batches(self._at, FOLLOWED, BATCH):
            for e in batch.events:
                job_id = e.stream_id.removeprefix("job-")
                await self.forget(job_id)
                for seen in self._expected.pop(job_id, ()):
                    if not seen.done():
                        seen.set_result(None)
            self._at = batch.horizon
