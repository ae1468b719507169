"""Which run folders a node keeps (domain/work_files.py): the one its job's current mux or
upload works from, on that node, and no other."""

from __future__ import annotations

from datetime import UTC, datetime

from spool.domain import job
from spool.domain.events import Event
from spool.domain.work_files import still_needed

AT = datetime(2026, 12, 7, tzinfo=UTC)


def _apply(state: job.JobState | None, events: list[Event]) -> job.JobState:
    version = state.version if state else 0
    for e in events:
        version += 1
        state = job.evolve(state, e, AT, version)
    assert state is not None
    return state


def _downloaded_on(node_id: str) -> job.JobState:
    """A job whose download completed on `node_id`: its mux is next, there."""
    state = _apply(
        None, job.create(job_id="j", account_id="a", url="http://m/a.mp4", options=job.JobOptions())
    )
    state = _apply(state, job.start_stage(state, "download", 1, 1, node_id))
    media = job.MediaFile(path="/w/j/1/a.mp4", kind="av", size=10)
    done = job.DownloadCompleted(
        run=1, attempt=1, node_id=node_id, files=[media], bytes=10, seconds=1.0
    )
    return _apply(state, [done])


def test_the_run_awaiting_its_mux_or_upload_on_this_node_is_kept() -> None:
    state = _downloaded_on("n1")

    assert still_needed(state, "n1", 1)
    assert not still_needed(state, "n2", 1)  # the same run, downloaded elsewhere
    assert not still_needed(state, "n1", 2)  # a run that is not the job's


def test_a_run_whose_node_was_lost_is_not_kept_for_the_download_that_starts_over() -> None:
    state = _downloaded_on("n1")
    state = _apply(state, job.start_stage(state, "mux", 1, 1, "n1"))
    failed = job.fail_stage(
        state, "mux", 1, 1, node_id="n1", reason="lost", restart_from_download=True
    )

    assert not still_needed(_apply(state, failed), "n1", 1)


def test_the_run_of_a_job_that_ended_or_is_unknown_is_not_kept() -> None:
    state = _downloaded_on("n1")

    assert not still_needed(_apply(state, job.cancel(state)), "n1", 1)
    assert not still_needed(None, "n1", 1)
