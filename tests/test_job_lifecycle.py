"""The job state machine, as pure functions: stages, retries, cancel, retry, file deletion."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from spool.domain import job
from spool.domain.errors import InvalidTransition
from spool.domain.events import Event

AT = datetime(2026, 11, 23, tzinfo=UTC)


def _apply(state: job.JobState | None, events: list[Event]) -> job.JobState:
    version = state.version if state else 0
    for e in events:
        version += 1
        state = job.evolve(state, e, AT, version)
    assert state is not None
    return state


def _new() -> job.JobState:
    return _apply(
        None, job.create(job_id="j", account_id="a", url="http://m/a.mp4", options=job.JobOptions())
    )


def _download(state: job.JobState) -> job.JobState:
    state = _apply(state, job.start_stage(state, "download", state.run, state.attempt, "n1"))
    return _apply(
        state,
        [
            job.DownloadCompleted(
                run=state.run,
                attempt=state.attempt,
                node_id="n1",
                files=[job.MediaFile(path="/w/a.mp4", kind="av", size=10)],
                bytes=10,
                seconds=1.0,
                width=1280,
                height=720,
            )
        ],
    )


def test_a_new_job_waits_for_its_first_download() -> None:
    state = _new()
    assert (state.status, state.step, state.stage, state.run, state.attempt) == (
        "Pending",
        "Queued",
        "download",
        1,
        1,
    )


def test_stages_advance_to_completed_with_one_terminal_event() -> None:
    state = _download(_new())
    assert (state.stage, state.attempt, state.actual_quality) == ("mux", 1, "720p")
    state = _apply(state, job.start_stage(state, "mux", 1, 1, "n1"))
    assert (state.status, state.step) == ("Processing", "Muxing")
    state = _apply(
        state,
        [
            job.MuxCompleted(
                run=1,
                attempt=1,
                node_id="n1",
                output=job.MediaFile(path="/w/o.mp4", kind="av", size=9),
                seconds=0.5,
            )
        ],
    )
    state = _apply(state, job.start_stage(state, "upload", 1, 1, "n1"))
    assert state.step == "Uploading"
    state = _apply(
        state,
        [
            job.JobCompleted(
                run=1, attempt=1, node_id="n1", key="o.mp4", storage="s3://b", size=9, seconds=0.2
            )
        ],
    )
    assert (state.status, state.step, state.key) == ("Completed", "Finished", "o.mp4")
    with pytest.raises(InvalidTransition):
        job.start_stage(state, "upload", 1, 1, "n1")  # a duplicate delivery does nothing


def test_a_failed_attempt_is_retried_with_backoff_until_attempts_run_out() -> None:
    state = _new()
    delays = []
    for attempt in (1, 2):
        events = job.fail_stage(
            state,
            "download",
            1,
            attempt,
            node_id="n1",
            reason="timeout",
            max_attempts=3,
            backoff=2.0,
        )
        assert [type(e) for e in events] == [job.StageFailed]
        delays.append(events[0].retry_in)  # type: ignore[attr-defined]
        state = _apply(state, events)
        assert (state.status, state.attempt) == ("Pending", attempt + 1)
    assert delays == [2.0, 4.0]
    final = job.fail_stage(state, "download", 1, 3, node_id="n1", reason="timeout", max_attempts=3)
    state = _apply(state, final)
    assert (state.status, state.error, state.retries["download"]) == ("Failed", "timeout", 3)


def test_a_non_retryable_failure_fails_the_job_at_once() -> None:
    events = job.fail_stage(
        _new(), "download", 1, 1, node_id="n1", reason="Source answered HTTP 404", retryable=False
    )
    state = _apply(_new(), events)
    assert (state.status, state.error_type) == ("Failed", "error")


def test_a_lost_node_restarts_the_job_from_download() -> None:
    state = _download(_new())
    state = _apply(
        state,
        job.fail_stage(
            state, "mux", 1, 1, node_id="n1", reason="node lost", restart_from_download=True
        ),
    )
    assert (state.stage, state.attempt) == ("download", 2)


def test_a_stale_unit_of_work_is_refused() -> None:
    state = _download(_new())
    with pytest.raises(InvalidTransition):
        job.start_stage(state, "download", 1, 1, "n2")
    with pytest.raises(InvalidTransition):
        job.fail_stage(state, "download", 1, 1, node_id="n2", reason="late")


def test_cancel_applies_to_pending_and_processing_jobs_only() -> None:
    state = _apply(_new(), job.cancel(_new()))
    assert state.status == "Cancelled"
    assert not job.is_current(state, "download", 1, 1)
    with pytest.raises(InvalidTransition, match="already cancelled"):
        job.cancel(state)


def test_retry_starts_a_new_run_from_download() -> None:
    with pytest.raises(InvalidTransition, match="Only failed or cancelled"):
        job.retry(_new())
    state = _apply(_new(), job.cancel(_new()))
    state = _apply(state, job.retry(state))
    assert (state.status, state.run, state.stage, state.attempt) == ("Pending", 2, "download", 1)
    assert job.arq_job_id("j", 2, "download", 1) != job.arq_job_id("j", 1, "download", 1)


def test_progress_of_an_old_attempt_is_ignored() -> None:
    state = _new()
    state = _apply(state, job.start_stage(state, "download", 1, 1, "n1"))
    state = _apply(state, job.fail_stage(state, "download", 1, 1, node_id="n1", reason="x"))
    late = job.StageProgressed(
        run=1, attempt=1, progress=job.Progress(stage="download", percent=50)
    )
    assert _apply(state, [late]).progress is None


def test_only_an_uploaded_file_can_be_deleted_once() -> None:
    with pytest.raises(InvalidTransition, match="no uploaded file"):
        job.delete_file(_new())


def test_codecs_are_said_in_the_job_apis_words_whatever_ffmpeg_calls_them() -> None:
    state = _download(_new())
    state = _apply(state, job.start_stage(state, "mux", 1, 1, "n1"))
    muxed = job.MuxCompleted(
        run=1,
        attempt=1,
        node_id="n1",
        output=job.MediaFile(path="/w/o.mp4", kind="av", size=9),
        seconds=0.5,
        video_codec="hevc",
        audio_codec="aac",
        native_video_codec="hevc",
        native_audio_codec="opus",
    )
    state = _apply(state, [muxed])
    assert (state.video_codec, state.audio_codec) == ("h265", "aac")
    assert (state.native_video_codec, state.native_audio_codec) == ("h265", "opus")


def test_a_retry_starts_the_timings_over_and_counts_from_the_retry() -> None:
    state = _download(_new())
    assert state.timings["download"].seconds == 1.0
    state = _apply(state, job.start_stage(state, "mux", 1, 1, "n1"))
    state = _apply(
        state, job.fail_stage(state, "mux", 1, 1, node_id="n1", reason="bad", retryable=False)
    )
    later = datetime(2026, 11, 24, tzinfo=UTC)
    (retried,) = job.retry(state)
    state = job.evolve(state, retried, later, state.version + 1)
    assert (state.timings, state.started_at, state.queued_at) == ({}, None, later)
    assert state.created_at == AT  # the job itself is as old as it was
