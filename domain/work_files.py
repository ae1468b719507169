"""Which of a node's local work files a job still needs: run folders on one node.

A run's files are downloaded on one node, and its mux and upload go to that node's own queue
(reactors/pipeline.py), so nothing else reads them. They are needed while the job goes on at mux
or upload on that node: in the run's own folder, or, after a retry from mux or upload
(`job.retry`), in the folders of the earlier runs whose files the job reuses (`runs_holding`).
A download starts from an empty folder (reactors/worker/stages_runner.py), so a download,
whichever node it is given to, needs none of an earlier attempt's files.

A job that failed or was cancelled after its download keeps its files on its node for a while
(`kept_for_retry`, `SPOOL_FAILED_FILES_KEEP`), so that a retry from mux or upload finds them;
the node's sweep (reactors/worker/sweep.py) reclaims them after that.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import PurePath

from spool.domain.job import JobState, reusable_from


def runs_holding(state: JobState) -> set[int]:
    """The runs whose folders (`<work>/<job>/<run>/...`) hold the files the job's state names
    (the downloaded files and the mux output)."""
    runs: set[int] = set()
    paths = [f.path for f in state.files] + ([state.output.path] if state.output else [])
    for path in paths:
        parts = PurePath(path).parts
        if state.job_id in parts:
            at = len(parts) - 1 - parts[::-1].index(state.job_id)
            if at + 1 < len(parts) and parts[at + 1].isdecimal():
                runs.add(int(parts[at + 1]))
    return runs


def still_needed(state: JobState | None, node_id: str, run: int) -> bool:
    """Whether node `node_id`'s files of `run` of the job in `state` (None: no such job) are
    still needed by the job's current unit of work."""
    return (
        state is not None
        and not state.terminal
        and (state.run == run or run in runs_holding(state))
        and state.stage in ("mux", "upload")
        and state.node_id == node_id
    )


def kept_for_retry(
    state: JobState | None, node_id: str, run: int, *, now: datetime, keep: timedelta
) -> bool:
    """Whether node `node_id` keeps its files of `run` for a retry of the job from mux or
    upload: the job failed or was cancelled after its download there, less than `keep` ago."""
    return (
        state is not None
        and state.status in ("Failed", "Cancelled")
        and state.node_id == node_id
        and reusable_from(state) != "download"
        and run in runs_holding(state)
        and state.finished_at is not None
        and now - state.finished_at < keep
    )
