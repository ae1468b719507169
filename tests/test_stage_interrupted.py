"""An attempt cut short by its node's shutdown (`StageInterrupted`) runs again for free.

The fold moves the job to the next attempt of the same stage, the pipeline dispatches that
attempt (to the node that holds the files, for a mux or an upload), the stage's attempts are
not spent, and the reads (`job_stages`, `spool replay`) show it as interrupted, not failed. A
stage the node went straight on to (no queue holds it) is interrupted and run again the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from spool.adapters.queue import Dispatch, unit_for
from spool.adapters.read_models import job_stages
from spool.domain import job
from spool.domain.events import Event, RecordedEvent
from tests.faults.checks import assert_nothing_lost
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.throttle import ThrottledS3, throttled_s3  # noqa: F401
from tests.fixtures.waiting import until

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _fold(events: list[Event]) -> job.JobState:
    state = job.fold([(e, AT, v) for v, e in enumerate(events, 1)])
    assert state is not None
    return state


def _created() -> list[Event]:
    return job.create(job_id="j1", account_id="a1", url="http://m/a.mp4", options=job.JobOptions())


def test_an_interrupted_attempt_runs_again_and_spends_none_of_the_stages_attempts() -> None:
    events = _created()
    for attempt in (1, 2):  # two shutdowns in a row, mid-download
        state = _fold(events)
        events += job.start_stage(state, "download", 1, attempt, "n1")
        events += job.interrupt_stage(_fold(events), "download", 1, attempt, node_id="n1")
    state = _fold(events)
    assert (state.status, state.stage, state.attempt) == ("Processing", "download", 3)
    assert state.retries == {} and state.error is None

    # Three real failures are still allowed: two retries, then the job fails.
    outcomes = []
    for attempt in (3, 4, 5):
        events += job.start_stage(_fold(events), "download", 1, attempt, "n1")
        failed = job.fail_stage(
            _fold(events), "download", 1, attempt, node_id="n1", reason="boom", max_attempts=3
        )
        events += failed
        outcomes.append([type(e).__name__ for e in failed])
    assert outcomes == [["StageFailed"], ["StageFailed"], ["StageFailed", "JobFailed"]]
    first_retry = next(e for e in events if isinstance(e, job.StageFailed))
    assert first_retry.retry_in == 2.0  # the first retry's backoff, as without the shutdowns


def test_the_next_stage_starts_with_its_own_full_budget() -> None:
    events = _created()
    events += job.start_stage(_fold(events), "download", 1, 1, "n1")
    events += job.interrupt_stage(_fold(events), "download", 1, 1, node_id="n1")
    events += job.start_stage(_fold(events), "download", 1, 2, "n1")
    events.append(
        job.DownloadCompleted(run=1, attempt=2, node_id="n1", files=[], bytes=1, seconds=0.1)
    )
    state = _fold(events)
    assert (state.stage, state.attempt, state.interruptions) == ("mux", 1, 0)


def test_an_interruption_dispatches_the_next_attempt_of_the_same_stage_on_the_same_node() -> None:
    interrupted = job.StageInterrupted(stage="mux", run=2, attempt=1, node_id="n7")
    assert unit_for("j1", interrupted) == Dispatch("j1", 2, "mux", 2, "n7")


def test_a_late_interruption_of_another_attempt_changes_nothing() -> None:
    events = _created()
    events += job.start_stage(_fold(events), "download", 1, 1, "n1")
    before = _fold(events)
    events.append(job.StageInterrupted(stage="download", run=1, attempt=7, node_id="n2"))
    after = _fold(events)
    assert (after.stage, after.attempt, after.interruptions) == (
        before.stage,
        before.attempt,
        before.interruptions,
    )


def test_the_stage_row_of_an_interrupted_attempt_says_interrupted() -> None:
    rows: dict[job_stages.StageKey, job_stages.StageRow] = {}
    job_stages.evolve(
        rows, "j1", job.StageStarted(stage="download", run=1, attempt=1, node_id="n1"), AT
    )
    job_stages.evolve(
        rows, "j1", job.StageInterrupted(stage="download", run=1, attempt=1, node_id="n1"), AT
    )
    row = rows[("j1", 1, "download", 1)]
    assert (row.outcome, row.finished_at) == ("interrupted", AT)
    assert row.reason == "interrupted by the shutdown of node n1"


async def _started(cluster: Cluster, job_id: str, stage: str) -> list[RecordedEvent]:
    async def check() -> list[RecordedEvent] | None:
        log = await cluster.store.read_stream(job.stream_id(job_id))
        return log if any(_is_start(e.data, stage) for e in log) else None

    return await until(check, seconds=60)


def _is_start(e: Event, stage: str) -> bool:
    return isinstance(e, job.StageStarted) and e.stage == stage


@pytest.mark.parametrize("stage", ["mux", "upload"])
async def test_a_node_stopped_during_a_stage_it_went_straight_on_to_records_it_interrupted(
    stage: str,
    start_cluster: StartCluster,
    media_server: MediaServer,
    long_clip: str,
    request: pytest.FixtureRequest,
) -> None:
    # A mux is held by its length (WebM of a long clip), an upload by a paused storage proxy.
    source, options = (long_clip, {"format": "webm"}) if stage == "mux" else ("clip.mp4", {})
    overrides: dict[str, Any] = {}
    throttled: ThrottledS3 | None = None
    if stage == "upload":
        throttled = request.getfixturevalue("throttled_s3")
        overrides["storage_url"] = throttled.storage_url
    async with start_cluster(**overrides) as cluster:
        if throttled is not None:
            throttled.proxy.pause()  # the upload hangs, half sent, until after the stop
        job_id = await cluster.create(media_server.url(source), filename="cut", **options)
        log = await _started(cluster, job_id, stage)
        # The node went straight on to the stage: its start is in the append of the result.
        start = next(e for e in log if _is_start(e.data, stage))
        result = next(e for e in log if e.version == start.version - 1)
        assert isinstance(result.data, job.DownloadCompleted | job.MuxCompleted)
        assert result.data.chained and result.tx == start.tx

        await cluster.stop_node()
        stopped = await cluster.store.read_stream(job.stream_id(job_id))
        assert [e.data for e in stopped if isinstance(e.data, job.StageInterrupted)] == [
            job.StageInterrupted(stage=stage, run=1, attempt=1, node_id=cluster.settings.node_id)
        ]

        if throttled is not None:
            throttled.proxy.unthrottle()
        cluster.start_node()
        done = await cluster.wait(job_id, *job.TERMINAL, seconds=120)
        assert done["status"] == "Completed", done
        assert done[f"{stage}_retries"] == 0, done

        log = await cluster.store.read_stream(job.stream_id(job_id))
        assert not any(isinstance(e.data, job.StageFailed) for e in log)
        started = [
            (e.data.stage, e.data.attempt) for e in log if isinstance(e.data, job.StageStarted)
        ]
        expected = [("download", 1), ("mux", 1), ("upload", 1)]
        expected.insert(expected.index((stage, 1)) + 1, (stage, 2))
        assert started == expected
        assert sum(isinstance(e.data, job.JobCompleted) for e in log) == 1
        assert cluster.objects() == [cluster.in_bucket(f"cut.{options.get('format', 'mp4')}")]
        await assert_nothing_lost(cluster, [job_id])
