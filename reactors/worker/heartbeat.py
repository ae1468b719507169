"""A node's heartbeat: every second, its beat (with its stages' progress milestones) in one
transaction and its stages' live progress beside it, then the cancellations and stalls of what
it runs."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from spool.adapters import event_partitions, live_progress, sysinfo
from spool.adapters.event_store import StreamAppend
from spool.adapters.job_store import load_job
from spool.adapters.periodic import run_periodically
from spool.adapters.repository import record_many
from spool.domain import job, lease, node
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Event, NewEvent
from spool.reactors.worker.drain import Drain
from spool.reactors.worker.registration import Registration
from spool.reactors.worker.unit import RunningUnit

log = logging.getLogger("spool.node")

_MOVING: tuple[type[Event], ...] = (job.StageStarted, *lease.ATTEMPT_ENDERS)
"""The events that can take a job off a unit: a later one than the unit's own start is read
as a sign to load the job and see (progress, webhooks, renames never move it)."""

# One probe per stream, by (stream_id, version): a join lets the planner weigh a scan of every
# partition, heartbeat days included, against probes it cannot tell will find nothing there.
_MOVED = f"""
SELECT r.stream_id FROM unnest($1::text[], $2::int[]) AS r(stream_id, v)
WHERE (SELECT true FROM events e
       WHERE e.stream_id = r.stream_id AND e.version > r.v
         AND e.type IN ({", ".join(f"'{t.__name__}'" for t in _MOVING)}) LIMIT 1)
"""


class Heartbeat(Registration, Drain):
    """Beats, reports progress, and notices units whose job moved on, stalls, a removal, a
    drain, a quarantine and a disk below its floor."""

    async def _tick_forever(self, stop: asyncio.Event) -> None:
        await run_periodically(
            self.tick,
            interval=self.settings.heartbeat_interval,
            stop=stop,
            what="heartbeat",
            paced=True,
            logger=log,
        )

    def counts(self) -> dict[str, int]:
        counts = {"download": 0, "mux": 0, "upload": 0}
        for unit in self.running.values():
            counts[unit.stage] += 1
        return counts

    async def tick(self) -> None:
        """Heartbeat + progress milestones in one transaction, live progress beside it; then
        units whose job moved on, and stalls."""
        # Off the loop: the first sample of a process waits out its CPU measuring span.
        usage = await asyncio.to_thread(sysinfo.usage, self.workroot)
        counts = self.counts()
        beat = node.NodeHeartbeat(
            node_id=self.node_id,
            hostname=self.hostname,
            ip=self.ip,
            downloading=counts["download"],
            muxing=counts["mux"],
            uploading=counts["upload"],
            running=sorted(self.claimed | set(self.running)),
            usage=usage,
            disk_floor=self.disk_floor,
        )
        today = datetime.now(UTC).date()
        if today != self._heartbeat_day:
            # Tomorrow's partition too, so the first beat after midnight waits on no DDL.
            await event_partitions.ensure_ahead(self.store.pool, today)
            self._heartbeat_day = today
        beats = node.heartbeat_stream_id(self.node_id, today)
        appends = [StreamAppend(beats, [NewEvent(beat, self.meta)])]
        reported: list[RunningUnit] = []
        live: list[live_progress.Sent] = []
        for unit in list(self.running.values()):
            if unit.progress is None or not job.is_current(
                unit.state, unit.stage, unit.run, unit.attempt
            ):
                continue
            live.append(
                live_progress.Sent(unit.job_id, unit.run, unit.stage, unit.attempt, unit.progress)
            )
            if job.progress_milestone(unit.state.progress, unit.progress):
                ev = job.StageProgressed(run=unit.run, attempt=unit.attempt, progress=unit.progress)
                # At the version the node knows: progress never lands after the stage's own
                # completion (or a cancel) appended meanwhile.
                appends.append(
                    StreamAppend(
                        job.stream_id(unit.job_id), [NewEvent(ev, unit.meta)], unit.state.version
                    )
                )
                reported.append(unit)
        try:
            # Re-sent every second: not worth a WAL flush each (1,000 nodes are 1,000 commits/s).
            results = await record_many(self.store, appends, durable=False)
        except ConcurrencyError:
            # A job stream moved under us (its stage completing, a cancel): send the heartbeat
            # alone now; read those jobs again so that the next milestone goes at the version
            # they have now, if their stage is still running.
            await record_many(self.store, appends[:1], durable=False)
            for unit in reported:
                fresh = await load_job(self.store, unit.job_id)
                if fresh is not None and fresh.version > unit.state.version:
                    unit.state = fresh
        else:
            versions = {r.stream_id: r.version for r in results}
            now = datetime.now(UTC)
            for unit, sent in zip(reported, appends[1:], strict=True):
                # Right after the version the node knows: the node's view stays exact. After
                # anything else, the next append at the known version clashes and re-reads.
                if versions[sent.stream_id] == unit.state.version + 1:
                    unit.state = job.evolve(
                        unit.state, sent.events[0].event, now, unit.state.version + 1
                    )
        # Beside the append, not in its transaction: the non-durable append is a statement of
        # its own (adapters/event_store.py `append_many`), and a reader falls back on the
        # fold's last milestone whenever the row is missing.
        if live or self._live_sent:
            await live_progress.publish(
                self.store.pool, self.node_id, live, live_progress.fresh_within(self.settings)
            )
            self._live_sent = bool(live)
        await self._check_moved_on()
        self._check_stalls()
        await self._check_removed()
        await self._follow_health()

    async def _check_moved_on(self) -> None:
        """Stop the units whose job moved on without them: cancelled, or failed over to another
        attempt or node while this one was cut off or thought lost. Each is told to stop (its
        download's sockets shut, FFmpeg killed, its multipart upload aborted) rather than
        finish work whose result would be refused."""
        if not self.running:
            return
        units = list(self.running.values())
        rows = await self.store.pool.fetch(
            _MOVED,
            [job.stream_id(u.job_id) for u in units],
            [u.since_version for u in units],
        )
        moved = {r[0] for r in rows}
        for unit in units:
            if job.stream_id(unit.job_id) not in moved or unit.worked or unit.cancel.is_set():
                continue
            fresh = await load_job(self.store, unit.job_id)
            if fresh is None or job.is_current(fresh, unit.stage, unit.run, unit.attempt):
                continue
            unit.state = fresh
            unit.moved_on = True
            unit.cancel.set()
            log.info(
                "%s of job %s (run %d, attempt %d) stopped: the job is at %s/%s run %d attempt %d",
                unit.stage,
                unit.job_id,
                unit.run,
                unit.attempt,
                fresh.status,
                fresh.stage,
                fresh.run,
                fresh.attempt,
            )

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for unit in self.running.values():
            if not unit.stalled and now - unit.last_progress > self.settings.stall_timeout:
                unit.stalled = True
                unit.cancel.set()
