"""The reconciler hands on a started unit when its node's lease on it expires (domain/lease.py),
judged from the log alone: never sooner, whatever Redis says, and never later for waiting on
arq's in-progress key of a worker that died with the unit."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_result

from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.adapters.queue import Dispatch, connect, dispatch
from spool.adapters.read_models import all_projections, job_stages
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.settings import Settings
from spool.domain import job, node
from spool.domain.events import Event, Metadata, NewEvent, RecordedEvent
from spool.reactors.projection import ProjectionRunner
from spool.reactors.reconciler import Reconciler
from tests.cluster_api_helpers import heartbeat


@dataclass
class Scene:
    store: EventStore
    runner: ProjectionRunner
    redis: ArqRedis
    reconciler: Reconciler
    done: list[str]
    """Every action the reconciler's passes took, in order."""

    async def passes_until(
        self, condition: Callable[[], bool | Awaitable[bool]], seconds: float = 30
    ) -> None:
        """Reconcile pass after pass (the projections caught up before each) until
        `condition`, asked after each pass, holds."""
        deadline = time.monotonic() + seconds
        while True:
            await self.runner.settle()
            self.done += await self.reconciler.reconcile_once()
            holds = condition()
            if holds if isinstance(holds, bool) else await holds:
                return
            assert time.monotonic() < deadline, self.done
            await asyncio.sleep(0.1)

    def handed_on(self, unit: str) -> bool:
        return any(action.startswith(f"failed {unit} ") for action in self.done)

    async def started(self, node_id: str, stage: job.Stage = "download") -> str:
        """A new job whose `stage` (attempt 1) `node_id` has just started, and that arq still
        holds in progress for a worker; its unit id."""
        job_id = uuid.uuid4().hex
        events: list[Event] = [
            *job.create(job_id=job_id, account_id="acct", url="http://m/a.mp4", options=OPTIONS)
        ]
        for done in ("download", "mux"):
            if done == stage:
                break
            events.append(job.StageStarted(stage=done, run=1, attempt=1, node_id=node_id))
            events.append(_completed(done, node_id))
        events.append(job.StageStarted(stage=stage, run=1, attempt=1, node_id=node_id))
        meta = Metadata(actor=f"node:{node_id}", node_id=node_id)
        await self.store.append(job.stream_id(job_id), [NewEvent(e, meta) for e in events], 0)
        unit = job.arq_job_id(job_id, 1, stage, 1)
        await self.redis.set(in_progress_key_prefix + unit, b"1", px=3_600_000)
        return unit

    async def started_over(self, first_mux: str, node_id: str) -> None:
        """The job of `first_mux` (started, its node gone) started over from download, which
        `node_id` has done: its mux is attempt 1 again, the same unit id, not started yet."""
        job_id = first_mux.split(":")[0]
        again = [
            job.StageFailed(
                stage="mux",
                run=1,
                attempt=1,
                node_id="gone",
                reason="The lease of node gone on mux expired",
                retry_stage="download",
                retry_attempt=2,
                lease_expired=True,
            ),
            job.StageStarted(stage="download", run=1, attempt=2, node_id=node_id),
            _completed("download", node_id),
        ]
        await self.redis.delete(in_progress_key_prefix + first_mux)  # its worker is gone
        version = len(await self.history(first_mux))
        meta = Metadata(actor="test")
        await self.store.append(job.stream_id(job_id), [NewEvent(e, meta) for e in again], version)

    async def beat(self, node_id: str, *units: str) -> None:
        """One heartbeat of `node_id` listing `units`, where a node appends it."""
        beat = heartbeat(node_id)
        beat = node.NodeHeartbeat(**{**_fields(beat), "running": list(units)})
        stream = node.heartbeat_stream_id(node_id, datetime.now(UTC).date())
        meta = Metadata(actor=f"node:{node_id}", node_id=node_id)
        await self.store.append(stream, [NewEvent(beat, meta)], None)

    @contextlib.asynccontextmanager
    async def beating(self, node_id: str, *units: str) -> AsyncIterator[None]:
        """`node_id` beats every 0.3 s, listing `units`, while the block runs."""

        async def beat_on() -> None:
            while True:
                await self.beat(node_id, *units)
                await asyncio.sleep(0.3)

        task = asyncio.create_task(beat_on())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def last_beat(self, node_id: str) -> datetime:
        stream = node.heartbeat_stream_id(node_id, datetime.now(UTC).date())
        return (await self.store.read_stream(stream))[-1].recorded_at

    async def history(self, unit: str) -> list[RecordedEvent]:
        return await self.store.read_stream(job.stream_id(unit.split(":")[0]))

    async def failure(self, unit: str) -> tuple[job.StageFailed, datetime]:
        (failed,) = [e for e in await self.history(unit) if isinstance(e.data, job.StageFailed)]
        assert isinstance(failed.data, job.StageFailed)
        return failed.data, failed.recorded_at

    async def quiet(self, unit: str, seconds: float) -> bool:
        """Whether the unit's job row has not changed for `seconds`."""
        found = await job_rows.unfinished(self.store.pool, timedelta(seconds=seconds))
        return (unit.split(":")[0], True) in found


OPTIONS = job.JobOptions()


def _fields(beat: node.NodeHeartbeat) -> dict[str, object]:
    return {f: getattr(beat, f) for f in beat.__struct_fields__}


def _completed(stage: str, node_id: str) -> Event:
    if stage == "download":
        return job.DownloadCompleted(
            run=1, attempt=1, node_id=node_id, files=[], bytes=1, seconds=1
        )
    output = job.MediaFile(path="out.mp4", kind="video", size=1)
    return job.MuxCompleted(run=1, attempt=1, node_id=node_id, output=output, seconds=1)


@contextlib.asynccontextmanager
async def scene(database_url: str, redis_url: str, lease_ttl: float) -> AsyncIterator[Scene]:
    """A reconciler over a database of its own, with the projections it reads."""
    pool = await create_pool(database_url, max_size=6)
    redis = await connect(redis_url)
    try:
        store = EventStore(pool)
        runner = ProjectionRunner(store, all_projections(), poll_interval=0.1)
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            lease_ttl=lease_ttl,
            node_timeout=lease_ttl,
            heartbeat_interval=0.5,
        )
        await runner.catch_up()  # every checkpoint there, `nodes`' too
        yield Scene(store, runner, redis, Reconciler(store, redis, settings), [])
    finally:
        await redis.aclose()
        await pool.close()


async def test_a_unit_is_handed_on_once_its_lease_expires_though_arq_holds_it_in_progress(
    fresh_database_url: str, redis_url: str
) -> None:
    async with scene(fresh_database_url, redis_url, lease_ttl=2.0) as s:
        lost = await s.started("gone")
        await s.beat("gone", lost)  # its last word: the node then dies with the unit
        kept = await s.started("alive")
        kept_granted_at = (await s.history(kept))[-1].recorded_at

        def lost_handed_on_and_keeps_grant_alone_long_expired() -> bool:
            past_grant = datetime.now(UTC) - kept_granted_at > timedelta(seconds=3)
            return s.handed_on(lost) and past_grant

        async with s.beating("alive", kept):
            await s.passes_until(lost_handed_on_and_keeps_grant_alone_long_expired)

        failed, at = await s.failure(lost)
        assert (failed.stage, failed.node_id, failed.lease_expired) == ("download", "gone", True)
        assert "lease of node gone on download expired" in failed.reason
        assert (failed.retry_stage, failed.retry_attempt) == ("download", 2)
        assert at - await s.last_beat("gone") >= timedelta(seconds=2)  # never sooner
        # The unit its node's heartbeats renew is untouched, though its start alone would have
        # expired by now and arq holds it in progress just the same.
        assert not any(isinstance(e.data, job.StageFailed) for e in await s.history(kept))
        await s.runner.settle()
        assert await job_stages.lease_expiries(s.store.pool) == [("download", 1)]


async def test_a_unit_just_started_and_in_no_heartbeat_yet_is_not_touched(
    fresh_database_url: str, redis_url: str
) -> None:
    async with scene(fresh_database_url, redis_url, lease_ttl=8.0) as s:
        # A unit whose node never beats shows that the passes judge and act.
        lost = await s.started("gone")
        # Passes go on while `lost` grows quiet: the fresh unit, started after that, holds its
        # lease for that long after `lost`'s has expired.
        await s.passes_until(lambda: s.quiet(lost, 4.0))
        fresh = await s.started("busy")  # taken, in no heartbeat yet: a starved node
        await s.beat("busy")  # a beat made before it took the unit
        passes_it_was_quiet = 0

        async def lost_handed_on_and_fresh_judged_quiet_twice() -> bool:
            nonlocal passes_it_was_quiet
            if await s.quiet(fresh, 2.0):
                passes_it_was_quiet += 1  # the next pass sees it quiet too
            return s.handed_on(lost) and passes_it_was_quiet >= 3

        await s.passes_until(lost_handed_on_and_fresh_judged_quiet_twice)

        granted_at = (await s.history(fresh))[-1].recorded_at
        assert datetime.now(UTC) - granted_at < timedelta(seconds=8)  # still within its lease
        assert not s.handed_on(fresh), s.done
        assert not any(isinstance(e.data, job.StageFailed) for e in await s.history(fresh))


async def test_a_mux_whose_node_is_gone_restarts_from_download_one_whose_node_beats_stays(
    fresh_database_url: str, redis_url: str
) -> None:
    async with scene(fresh_database_url, redis_url, lease_ttl=2.0) as s:
        gone = await s.started("gone", stage="mux")
        await s.beat("gone", gone)
        dropped = await s.started("restarted", stage="mux")
        await s.beat("restarted", dropped)
        # Restarted with the same id and its data dir: it beats, without the unit.
        async with s.beating("restarted"):
            await s.passes_until(lambda: s.handed_on(gone) and s.handed_on(dropped))

        lost_files, _ = await s.failure(gone)
        assert (lost_files.retry_stage, lost_files.retry_attempt) == ("download", 2)
        kept_files, _ = await s.failure(dropped)
        assert (kept_files.retry_stage, kept_files.retry_attempt) == ("mux", 2)
        assert "lease of node restarted on mux expired" in kept_files.reason


async def test_a_mux_started_over_from_download_is_not_judged_by_its_first_incarnations_start(
    fresh_database_url: str, redis_url: str
) -> None:
    """A unit's id comes back after a restart from download (the mux after the new download is
    attempt 1 again): the lease of the first mux, on a node long gone, is not the new one's."""
    async with scene(fresh_database_url, redis_url, lease_ttl=2.0) as s:
        first_mux = await s.started("gone", stage="mux")
        await s.started_over(first_mux, "n2")
        # The new mux waits in n2's queue for a slot; n2 beats on.
        job_id = first_mux.split(":")[0]
        await dispatch(s.redis, Dispatch(job_id, 1, "mux", 1, "n2"))
        lost = await s.started("elsewhere")  # shows the passes judge and act meanwhile
        async with s.beating("n2"):
            await s.passes_until(lambda: s.handed_on(lost))

        assert not s.handed_on(first_mux), s.done
        assert [type(e.data) for e in (await s.history(first_mux))[-3:]] == [
            job.StageFailed,
            job.StageStarted,
            job.DownloadCompleted,
        ]


async def test_a_unit_arq_refused_for_an_earlier_units_result_of_its_id_is_enqueued_again(
    fresh_database_url: str, redis_url: str
) -> None:
    """arq enqueues nothing under an id whose result it keeps: the mux after a restart from
    download would never run. It is enqueued again, no attempt spent."""
    async with scene(fresh_database_url, redis_url, lease_ttl=2.0) as s:
        first_mux = await s.started("gone", stage="mux")
        ran = int(time.time() * 1000)  # the first mux ran to its end, before the restart
        kept = serialize_result("mux", (), {}, 1, ran, True, "stale", ran, ran, "", "q", first_mux)
        assert kept is not None
        await s.redis.set(result_key_prefix + first_mux, kept, px=3_600_000)
        await s.started_over(first_mux, "n2")

        async with s.beating("n2"):
            await s.passes_until(lambda: any(first_mux in action for action in s.done))

        assert s.done == [f"re-dispatched {first_mux}: the queue held an earlier unit of its id"]
        assert await s.redis.exists(job_key_prefix + first_mux)  # queued for n2 again
        last = (await s.history(first_mux))[-1]
        assert isinstance(last.data, job.DownloadCompleted)  # no attempt failed
