"""A node's heartbeat: every second, its beat and its stages' progress in one transaction,
then the cancellations and stalls of what it runs."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from spool.adapters import event_partitions, sysinfo
from spool.adapters.event_store import StreamAppend
from spool.adapters.job_store import load_job
from spool.adapters.periodic import run_periodically
from spool.adapters.repository import record_many
from spool.domain import job, node
from spool.domain.errors import ConcurrencyError
from spool.domain.events import NewEvent
from spool.reactors.worker.drain import Drain
from spool.reactors.worker.registration import Registration
from spool.reactors.worker.unit import RunningUnit

log = logging.getLogger("spool.node")

# One probe per stream, by (stream_id, version): a join lets the planner weigh a scan of every
# partition, heartbeat days included, against probes it cannot tell will find nothing there.
_CANCELLED = f"""
SELECT r.stream_id FROM unnest($1::text[], $2::int[]) AS r(stream_id, v)
WHERE (SELECT true FROM events e
       WHERE e.stream_id = r.stream_id AND e.version > r.v
         AND e.type = '{job.JobCancelled.__name__}' LIMIT 1)
"""


class Heartbeat(Registration, Drain):
    """Beats, reports progress, and notices cancellations, stalls, a removal, a drain, a
    quarantine and a disk below its floor."""

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
        """Heartbeat + progress in one transaction; then cancellations and stalls."""
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
        for unit in list(self.running.values()):
            if (
                unit.progress is not None
                and unit.progress != unit.reported
                and job.is_current(unit.state, unit.stage, unit.run, unit.attempt)
            ):
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
            # alone now; read those jobs again so that next second's progress goes at the
            # version they have now, if their stage is still running.
            await record_many(self.store, appends[:1], durable=False)
            for unit in reported:
                fresh = await load_job(self.store, unit.job_id)
                if fresh is not None and fresh.version > unit.state.version:
                    unit.state = fresh
        else:
            versions = {r.stream_id: r.version for r in results}
            now = datetime.now(UTC)
            for unit, sent in zip(reported, appends[1:], strict=True):
                unit.reported = unit.progress
                # Right after the version the node knows: the node's view stays exact. After
                # anything else, the next append at the known version clashes and re-reads.
                if versions[sent.stream_id] == unit.state.version + 1:
                    unit.state = job.evolve(
                        unit.state, sent.events[0].event, now, unit.state.version + 1
                    )
        await self._check_cancellations()
        self._check_stalls()
        await self._check_removed()
        await self._follow_health()

    async def _check_cancellations(self) -> None:
        if not self.running:
            return
        units = list(self.running.values())
        rows = await self.store.pool.fetch(
            _CANCELLED,
            [job.stream_id(u.job_id) for u in units],
            [u.since_version for u in units],
        )
        cancelled = {r[0] for r in rows}
        for unit in units:
            if job.stream_id(unit.job_id) in cancelled:
                unit.cancel.set()

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for unit in self.running.values():
            if not unit.stalled and now - unit.last_progress > self.settings.stall_timeout:
                unit.stalled = True
                unit.cancel.set()
